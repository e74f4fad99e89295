"""OpenImages v6 MLPerf subset (RetinaNet): COCO-json labels and JPEGs in the reference's layout."""
