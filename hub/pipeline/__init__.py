"""The message pipeline: inbox → translate → deliver → delivered | retrying | dead."""
