"""Collaborative editing: CRDT documents over the Yjs sync protocol (issue to come)."""
