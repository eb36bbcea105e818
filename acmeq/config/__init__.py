"""Settings: the typed configuration, its loader and the seed's defaults."""
