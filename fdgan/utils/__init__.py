"""Helpers around FD-GAN training: image conversion (:mod:`.util`), the HTML gallery
(:mod:`.html`) and the dashboards (:mod:`.visualizer`)."""
