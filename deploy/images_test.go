package deploy

import (
	"os/exec"
	"path"
	"regexp"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/releaseutil"

	"github.com/clustermesh/clustermesh/internal/ociimage"
)

// TestDefaultImagesAreWhatMakeImagesBuilds renders the chart as the CLI of a
// stamped build does and expects the image references `make images` writes
// for the same version (internal/ociimage names them).
func TestDefaultImagesAreWhatMakeImagesBuilds(t *testing.T) {
	tests := []struct {
		name       string
		appVersion string // what the stamped CLI passes; "" = Chart.yaml's
	}{
		{name: "release build", appVersion: "v0.1.0"},
		{name: "build after a release", appVersion: "v0.1.0-7-g1a2b3c4"},
		{name: "dirty build before the first tag", appVersion: "1a2b3c4-dirty"},
		{name: "chart directory", appVersion: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadChart(tt.appVersion)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.appVersion
			if want == "" {
				want = c.Metadata.AppVersion
			}
			inst := action.NewInstall(&action.Configuration{})
			inst.ClientOnly, inst.DryRun, inst.Replace = true, true, true
			inst.ReleaseName, inst.Namespace = "clustermesh", testNamespace
			inst.KubeVersion = &chartutil.KubeVersion{Version: "v1.37.2", Major: "1", Minor: "37"}
			rel, err := inst.Run(c, baseValues())
			if err != nil {
				t.Fatal(err)
			}
			var images []string
			for _, doc := range releaseutil.SplitManifests(rel.Manifest) {
				for _, m := range regexp.MustCompile(`(?m)^\s+image: (\S+)$`).FindAllStringSubmatch(doc, -1) {
					images = append(images, strings.Trim(m[1], `"`))
				}
			}
			wantRefs := map[string]bool{}
			for _, s := range ociimage.Specs {
				if s.InChart {
					wantRefs[ociimage.Image{Repository: path.Join(ociimage.Repository, s.Name), Tag: want}.Ref()] = true
				}
			}
			if len(images) != len(wantRefs) {
				t.Fatalf("chart images %v, want %v", images, wantRefs)
			}
			for _, im := range images {
				if !wantRefs[im] {
					t.Errorf("chart image %s is not one `make images` builds (%v)", im, wantRefs)
				}
			}
		})
	}
}

// TestChartAppVersionIsTheReleaseTag: Chart.yaml's appVersion is a release
// tag as hack/version.sh prints it, and at a release commit it is that tag.
func TestChartAppVersionIsTheReleaseTag(t *testing.T) {
	c, err := loadChart("")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^v\d+\.\d+\.\d+$`).MatchString(c.Metadata.AppVersion) {
		t.Errorf("appVersion %q is not a release tag vX.Y.Z", c.Metadata.AppVersion)
	}
	out, err := exec.Command("git", "describe", "--tags", "--exact-match", "--match", "v[0-9]*").Output()
	if err != nil {
		t.Logf("HEAD is not a release tag (%v): the CLI sets the tag to its stamped version", err)
		return
	}
	if tag := strings.TrimSpace(string(out)); tag != c.Metadata.AppVersion {
		t.Errorf("HEAD is release %s but Chart.yaml has appVersion %s", tag, c.Metadata.AppVersion)
	}
}
