"""The one TOML file: its sections, the checks that name each problem's place, and how a
configuration is rendered back."""
