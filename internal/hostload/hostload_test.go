package hostload

import (
	"strconv"
	"strings"
	"testing"
)

func TestAverage(t *testing.T) {
	f := strings.Fields(Average())
	if len(f) != 3 {
		t.Fatalf("Average() = %q, want three numbers", Average())
	}
	for _, s := range f {
		if _, err := strconv.ParseFloat(s, 64); err != nil {
			t.Errorf("%q is not a load average: %v", s, err)
		}
	}
}
