// composecheck loads docker-compose.yml (and any override files after it, merged as
// `docker compose -f a -f b` merges them) with the Compose specification's own loader
// (compose-go, what `docker compose config` uses), resolving variables from .env, and fails on
// any error. Prints each service's image and published ports (host address included). Built
// and run by stack/run.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck <docker-compose.yml> [override.yml ...]")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(
		os.Args[1:],
		cli.WithWorkingDirectory("."),
		cli.WithDotEnv,
		cli.WithOsEnv,
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "compose options:", err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "compose file invalid:", err)
		os.Exit(1)
	}
	for _, name := range project.ServiceNames() {
		service := project.Services[name]
		fmt.Printf("%s\t%s\n", name, service.Image)
		for key, value := range service.Environment {
			if value != nil && key == "WSMON_CLUSTER__REDIS_URL" {
				fmt.Printf("env\t%s\t%s=%s\n", name, key, *value)
			}
		}
		for _, p := range service.Ports {
			fmt.Printf("port\t%s\t%s:%s->%d\n", name, p.HostIP, p.Published, p.Target)
		}
	}
}
