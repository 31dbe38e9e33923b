"""The serving side: the logging policy's config, exploration groups and densities
(``exploration``, numpy only) and the TorchScript exploration module exported for serving
(``export``)."""
