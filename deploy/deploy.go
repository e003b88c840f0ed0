package deploy

import (
	"embed"
	"fmt"
	"io/fs"
	"path"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"

	"github.com/clustermesh/clustermesh/internal/version"
)

// ChartName is the name of the embedded chart.
const ChartName = "clustermesh"

//go:embed all:charts/clustermesh
var charts embed.FS

// ChartFS returns the files of the clustermesh chart, rooted at the chart
// directory (Chart.yaml, values.yaml, templates/...).
func ChartFS() fs.FS {
	sub, err := fs.Sub(charts, "charts/"+ChartName)
	if err != nil {
		panic(err) // the path is a compile-time constant of the embed above
	}
	return sub
}

// LoadChart loads the embedded chart with Helm's loader. In a binary built by
// `make build` or `make images` (version stamped, see internal/version) the
// chart's appVersion, and so its default image tag, becomes that version: the
// CLI deploys the images built from its own commit, and `make images` tags
// them so. The chart as a directory keeps the appVersion of Chart.yaml, the
// release tag (hack/version.sh prints exactly that at the release commit).
func LoadChart() (*chart.Chart, error) {
	appVersion := ""
	if version.Stamped() {
		appVersion = version.Version()
	}
	return loadChart(appVersion)
}

// loadChart loads the embedded chart; a non-empty appVersion replaces the
// one of Chart.yaml.
func loadChart(appVersion string) (*chart.Chart, error) {
	fsys := ChartFS()
	var files []*loader.BufferedFile
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if path.Base(p) == ".helmignore" {
			return nil
		}
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		files = append(files, &loader.BufferedFile{Name: p, Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read embedded chart: %w", err)
	}
	c, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("load embedded chart: %w", err)
	}
	if appVersion != "" {
		c.Metadata.AppVersion = appVersion
	}
	return c, nil
}
