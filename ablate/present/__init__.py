"""Tables and figures for people: the CLI's and the demo's output."""
