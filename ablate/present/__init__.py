"""Tables and figures for people: terminal tables (``tables``), the heatmap and figure files
(``heatmap``), and the demo's markdown summary (``markdown``)."""
