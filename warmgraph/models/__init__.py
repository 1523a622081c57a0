"""Reference model code written for graphs: static shapes inside a step, no host syncs."""
