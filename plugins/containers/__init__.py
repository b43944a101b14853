"""Container plugins: the container type, compression streams, zip, OVA (tar) and its OVF descriptor, conversion."""
