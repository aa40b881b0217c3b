"""Ways to build a steering vector: contrastive methods on pairs, and PAS / iPAS on labelled items."""
