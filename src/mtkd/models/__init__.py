"""Students, teachers, pretrained weights, feature hooks and model costs."""
