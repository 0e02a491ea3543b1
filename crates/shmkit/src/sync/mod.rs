//! Process-shared synchronisation primitives that live inside a segment.
