// compose-check loads compose files with compose-go, the library `docker compose` itself loads
// them with (schema, interpolation, anchors, paths), and prints the services: a file it accepts
// is one `docker compose config` accepts. Built by deploy/install-test-tools.sh; used by
// tests/deploy/test_stack.py.
//
//	compose-check deploy/compose/compose.yaml
package main

import (
	"context"
	"fmt"
	"os"
	"sort"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check COMPOSE_FILE...")
		os.Exit(2)
	}
	if err := check(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func check(files []string) error {
	opts, err := cli.NewProjectOptions(files, cli.WithOsEnv, cli.WithName("alignloop"), cli.WithResolvedPaths(true))
	if err != nil {
		return err
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return err
	}
	names := project.ServiceNames()
	sort.Strings(names)
	for _, n := range names {
		fmt.Println(n)
	}
	return nil
}
