"""Image decoding, dataset folders (ForenSynths / GenImage layouts), cached features, embedded benchmark."""
