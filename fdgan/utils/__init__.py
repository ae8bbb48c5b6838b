"""Helpers around FD-GAN training: image conversion (:mod:`.util`) and the dashboards
(:mod:`.visualizer`); the HTML gallery is :class:`reid.utils.html.HTML`."""
