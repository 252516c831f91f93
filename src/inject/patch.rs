//! A JSON Patch built op by op against a working copy of the document, so every op's path
//! (array indices in particular) refers to the document as the earlier ops left it — exactly how
//! the apiserver applies them.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::Value;

pub struct PatchBuilder {
    doc: Value,
    ops: Vec<PatchOperation>,
}

/// A pointer from unescaped tokens (`/` and `~` inside a token are escaped as RFC 6901 says).
pub fn pointer<'a>(tokens: impl IntoIterator<Item = &'a str>) -> PointerBuf {
    PointerBuf::from_tokens(tokens)
}

impl PatchBuilder {
    pub fn new(doc: Value) -> Self {
        PatchBuilder {
            doc,
            ops: Vec::new(),
        }
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }

    pub fn get(&self, path: &PointerBuf) -> Option<&Value> {
        // jsonptr walks the tokens in place; `Value::pointer` would allocate two strings per
        // token, which was a quarter of the mutating webhook's time (BENCHMARKS.md).
        path.resolve(&self.doc).ok()
    }

    fn push(&mut self, op: PatchOperation) {
        // Every op is built from the working copy itself, so applying it cannot fail; if it
        // somehow did, dropping the op keeps the patch consistent with the working copy.
        if json_patch::patch(&mut self.doc, std::slice::from_ref(&op)).is_ok() {
            self.ops.push(op);
        }
    }

    pub fn add(&mut self, path: PointerBuf, value: Value) {
        self.push(PatchOperation::Add(AddOperation { path, value }));
    }

    pub fn replace(&mut self, path: PointerBuf, value: Value) {
        self.push(PatchOperation::Replace(ReplaceOperation { path, value }));
    }

    pub fn remove(&mut self, path: PointerBuf) {
        self.push(PatchOperation::Remove(RemoveOperation { path }));
    }

    /// Sets `path` to `value` unless what is there already contains it (fields the apiserver
    /// defaulted in are tolerated, so a stored object yields no op).
    pub fn ensure(&mut self, path: PointerBuf, value: Value) {
        match self.get(&path) {
            Some(current) if contains(current, &value) => {}
            Some(_) => self.replace(path, value),
            None => self.add(path, value),
        }
    }

    pub fn into_ops(self) -> (Vec<PatchOperation>, Value) {
        (self.ops, self.doc)
    }
}

/// Whether `have` holds everything `want` says: objects may carry extra keys (defaults), arrays
/// must match element by element, scalars must be equal.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        _ => have == want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(
            pointer([
                "metadata",
                "annotations",
                "backups.k8s.bnerd.com/notify",
                "a~b"
            ])
            .as_str(),
            "/metadata/annotations/backups.k8s.bnerd.com~1notify/a~0b"
        );
    }

    #[test]
    fn ops_follow_the_working_copy() {
        let mut b = PatchBuilder::new(json!({"list": [{"name": "a"}]}));
        b.add(pointer(["list", "0"]), json!({"name": "x"}));
        b.ensure(pointer(["list", "1"]), json!({"name": "a"}));
        b.ensure(pointer(["list", "1", "name"]), json!("b"));
        let (ops, doc) = b.into_ops();
        assert_eq!(doc, json!({"list": [{"name": "x"}, {"name": "b"}]}));
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn contains_tolerates_defaulted_fields() {
        let stored = json!({"name": "n", "image": "i", "imagePullPolicy": "IfNotPresent", "env": [{"name": "A", "value": "1"}]});
        assert!(contains(
            &stored,
            &json!({"name": "n", "env": [{"name": "A", "value": "1"}]})
        ));
        assert!(!contains(
            &stored,
            &json!({"name": "n", "env": [{"name": "A", "value": "2"}]})
        ));
        assert!(!contains(&stored, &json!({"env": []})));
    }
}
