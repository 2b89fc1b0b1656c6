"""Ways to run a built artifact: in-process through TVM's Python VM, or the C++ runner under qemu."""
