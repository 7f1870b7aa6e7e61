"""Model bundles: the signed format, and the store that installs, trials and rolls them back
on a gateway."""
