"""What owners watch: the health and state messages, Home Assistant discovery, systemd
notifications and the status file."""
