package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/internal/version"
)

func newVersionCommand(cfg Config) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and commit of this clustermesh build",
		Long: `Print the version and commit of this clustermesh build. The version is also the
tag of the images that clustermesh enable deploys (see docs/user-guide.md).`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintln(cfg.Stdout, "clustermesh "+version.String())
			return err
		},
	}
}
