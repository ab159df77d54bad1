// The third-party code of the collaborative editor page (/docs/{key}/), bundled by
// assets/build.mjs into collaboration/static/collaboration/vendor/collab.js: Yjs and its
// websocket provider, Tiptap on y-prosemirror for rich documents, CodeMirror 6 on
// y-codemirror.next for plain text, and a text diff for the version history. One copy of
// Yjs serves them all (two copies would not recognise each other's types).

export * as Y from "yjs";
export { WebsocketProvider } from "y-websocket";

export { Editor, Extension } from "@tiptap/core";
export { default as StarterKit } from "@tiptap/starter-kit";
export { default as Collaboration } from "@tiptap/extension-collaboration";
export { default as CollaborationCursor } from "@tiptap/extension-collaboration-cursor";
export { Plugin, PluginKey } from "@tiptap/pm/state";
export { Decoration as PMDecoration, DecorationSet as PMDecorationSet } from "@tiptap/pm/view";
export {
  ySyncPluginKey,
  absolutePositionToRelativePosition,
  relativePositionToAbsolutePosition,
} from "y-prosemirror";

export { basicSetup } from "codemirror";
export { EditorState, StateEffect, StateField } from "@codemirror/state";
export { EditorView, Decoration as CMDecoration, placeholder as cmPlaceholder } from "@codemirror/view";
export { yCollab } from "y-codemirror.next";

export { diffWordsWithSpace, diffChars } from "diff";
