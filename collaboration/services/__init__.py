"""The rules of collaborative documents: members and roles (documents.py), storing and
loading their Yjs updates (updates.py), and the y-websocket protocol (protocol.py)."""
