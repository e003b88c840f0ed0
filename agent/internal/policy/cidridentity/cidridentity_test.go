package cidridentity

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func prefixesOf(ids []Identity) []string {
	var out []string
	for _, i := range ids {
		out = append(out, i.Prefix.String())
	}
	slices.Sort(out)
	return out
}

// TestRefcount: an identity is created by the first policy naming its
// prefix, shared by the others, and freed with the last one.
func TestRefcount(t *testing.T) {
	a := New(0)
	p1 := prefixes("10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32")
	p2 := prefixes("10.0.0.0/8", "192.0.2.10/32")

	created, err := a.Acquire(p1)
	if err != nil {
		t.Fatal(err)
	}
	if got := prefixesOf(created); !slices.Equal(got, []string{"10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"}) {
		t.Fatalf("created %v", got)
	}
	for _, c := range created {
		if !selector.IsLocalScope(c.ID) {
			t.Errorf("identity %d of %s is not local scope", c.ID, c.Prefix)
		}
		if !c.Labels.Equal(selector.CIDRLabels(c.Prefix)) {
			t.Errorf("labels of %s: %s", c.Prefix, c.Labels)
		}
	}
	ten, _ := a.Lookup(netip.MustParseAddr("10.9.9.9"))
	created, err = a.Acquire(p2)
	if err != nil {
		t.Fatal(err)
	}
	if got := prefixesOf(created); !slices.Equal(got, []string{"192.0.2.10/32"}) {
		t.Fatalf("second policy created %v, want only 192.0.2.10/32", got)
	}
	if pfx, ok := a.Prefix(ten.ID); !ok || pfx != netip.MustParsePrefix("10.0.0.0/8") {
		t.Errorf("prefix of %d: %v %v", ten.ID, pfx, ok)
	}
	if again, _ := a.Lookup(netip.MustParseAddr("10.9.9.9")); again.ID != ten.ID {
		t.Errorf("shared prefix changed identity: %d then %d", ten.ID, again.ID)
	}

	if got := prefixesOf(a.Release(p1)); !slices.Equal(got, []string{"10.1.0.0/16", "2001:db8::/32"}) {
		t.Errorf("releasing the first policy freed %v, want the prefixes only it named", got)
	}
	if got, ok := a.Lookup(netip.MustParseAddr("10.1.2.3")); !ok || got.Prefix != netip.MustParsePrefix("10.0.0.0/8") {
		t.Errorf("lookup of 10.1.2.3 after release: %v %v, want 10.0.0.0/8", got.Prefix, ok)
	}
	if got := prefixesOf(a.Release(p2)); !slices.Equal(got, []string{"10.0.0.0/8", "192.0.2.10/32"}) {
		t.Errorf("releasing the last policy freed %v", got)
	}
	if a.Len() != 0 {
		t.Errorf("%d identities left", a.Len())
	}
	if _, ok := a.Lookup(netip.MustParseAddr("10.1.2.3")); ok {
		t.Error("lookup found a freed prefix")
	}
	if _, ok := a.Prefix(ten.ID); ok {
		t.Error("a freed identity still has a prefix")
	}
	// A freed number is not handed out again at once.
	created, _ = a.Acquire(prefixes("10.1.0.0/16"))
	if created[0].ID == ten.ID {
		t.Errorf("freed identity %d reused at once", ten.ID)
	}
}

func TestLookupLongestPrefix(t *testing.T) {
	a := New(0)
	if _, err := a.Acquire(prefixes("0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "::/0", "2001:db8::/32")); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ addr, want string }{
		{"10.1.0.1", "10.1.0.0/16"},
		{"10.2.0.1", "10.0.0.0/8"},
		{"192.0.2.1", "0.0.0.0/0"},
		{"2001:db8::1", "2001:db8::/32"},
		{"2001:db9::1", "::/0"},
	}
	for _, tc := range cases {
		t.Run(tc.addr, func(t *testing.T) {
			got, ok := a.Lookup(netip.MustParseAddr(tc.addr))
			if !ok || got.Prefix.String() != tc.want {
				t.Errorf("got %v %v, want %s", got.Prefix, ok, tc.want)
			}
		})
	}
}

// TestExhausted: an acquisition over the bound changes nothing.
func TestExhausted(t *testing.T) {
	a := New(2)
	if _, err := a.Acquire(prefixes("10.0.0.0/8")); err != nil {
		t.Fatal(err)
	}
	_, err := a.Acquire(prefixes("10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16"))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	if a.Len() != 1 {
		t.Errorf("%d identities after a refused acquisition, want 1", a.Len())
	}
	if got := a.Release(prefixes("10.0.0.0/8")); len(got) != 1 {
		t.Errorf("the refused acquisition took a reference: release freed %v", got)
	}
}

// TestRestore: after a restart each prefix gets the number an earlier
// agent gave it (its entries stay right while policies are read again),
// and no other prefix gets one of those numbers.
func TestRestore(t *testing.T) {
	a := New(0)
	a.Restore(map[netip.Prefix]selector.ID{
		netip.MustParsePrefix("10.0.0.0/8"):   selector.IdentityScopeLocal | 1,
		netip.MustParsePrefix("192.0.2.0/24"): selector.IdentityScopeLocal | 2,
		netip.MustParsePrefix("10.1.0.0/16"):  7, // not a CIDR identity: ignored
	})
	created, err := a.Acquire(prefixes("192.0.2.0/24", "198.51.100.0/24", "10.1.0.0/16", "10.0.0.0/8"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]selector.ID{}
	for _, c := range created {
		got[c.Prefix.String()] = c.ID
	}
	want := map[string]selector.ID{
		"192.0.2.0/24":    selector.IdentityScopeLocal | 2,
		"10.0.0.0/8":      selector.IdentityScopeLocal | 1,
		"198.51.100.0/24": selector.IdentityScopeLocal | 3, // the first number not restored
		"10.1.0.0/16":     selector.IdentityScopeLocal | 4,
	}
	if !maps.Equal(got, want) {
		t.Errorf("numbers %v, want %v", got, want)
	}
}
