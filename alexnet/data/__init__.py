"""The data the network learns from: image folders, labels and decoding (folders)."""
