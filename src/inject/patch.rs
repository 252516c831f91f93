//! A JSON Patch built op by op against a working copy of the document, so every op's path
//! (array indices in particular) refers to the document as the earlier ops left it — exactly how
//! the apiserver applies them.

use json_patch::jsonptr::{Pointer, PointerBuf};
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
        if apply(&mut self.doc, &op).is_some() {
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

    /// Sets `path` to `value`, an entry the injector owns whole, unless what is there is `value`
    /// plus at most what the apiserver defaults in ([`is_owned_as`]). A field an earlier
    /// injection left (the CPU limit of a dropped flag) or a user added (`readOnly` on the
    /// notifier's mount) is replaced with it.
    pub fn ensure_owned(&mut self, path: PointerBuf, value: Value) {
        match self.get(&path) {
            Some(current) if is_owned_as(current, &value) => {}
            Some(_) => self.replace(path, value),
            None => self.add(path, value),
        }
    }

    pub fn into_ops(self) -> (Vec<PatchOperation>, Value) {
        (self.ops, self.doc)
    }
}

/// Applies one op as RFC 6902 says, for the three kinds the builder makes; `None` when it does
/// not apply. Ops on the root (the empty pointer) are not supported: the builder only ever
/// points inside the pod spec. json-patch's own `patch` walks the document with `Value::pointer_mut`, which
/// allocates per token, and keeps an undo log: that was a third of an injection.
fn apply(doc: &mut Value, op: &PatchOperation) -> Option<()> {
    match op {
        PatchOperation::Add(AddOperation { path, value }) => {
            let (parent, last) = split(doc, path)?;
            match parent {
                Value::Object(members) => {
                    members.insert(last, value.clone());
                }
                Value::Array(items) => {
                    let at = if last == "-" {
                        items.len()
                    } else {
                        index(&last).filter(|i| *i <= items.len())?
                    };
                    items.insert(at, value.clone());
                }
                _ => return None,
            }
        }
        PatchOperation::Replace(ReplaceOperation { path, value }) => {
            *path.resolve_mut(doc).ok()? = value.clone();
        }
        PatchOperation::Remove(RemoveOperation { path }) => match split(doc, path)? {
            (Value::Object(members), last) => {
                members.remove(&last)?;
            }
            (Value::Array(items), last) => {
                let at = index(&last).filter(|i| *i < items.len())?;
                items.remove(at);
            }
            _ => return None,
        },
        _ => return None,
    }
    Some(())
}

/// The value holding `path`'s last token, and that token decoded.
fn split<'d>(doc: &'d mut Value, path: &Pointer) -> Option<(&'d mut Value, String)> {
    let (parent, last) = path.split_back()?;
    let parent = parent.resolve_mut(doc).ok()?;
    Some((parent, last.decoded().into_owned()))
}

/// An array index token: decimal digits, no leading zero (RFC 6901).
fn index(token: &str) -> Option<usize> {
    let digits = token.bytes().all(|b| b.is_ascii_digit());
    if token.is_empty() || !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// Whether `have` holds everything `want` says: objects may carry extra keys (defaults), arrays
/// must match element by element, scalars must be equal. An empty list or string (or null) in
/// `want` may be absent from `have`: the apiserver does not store them (`tolerations: []`, an
/// env var's `value: ""`). An empty object must be there: `emptyDir: {}` is stored, and its
/// absence means the volume has another source; empty maps (`nodeSelector: {}`, `matchLabels: {}`), which are not
/// stored, are left out of what the controller applies instead. `false` and `0` must be there
/// too: on a pointer field their absence means something else.
pub fn contains(have: &Value, want: &Value) -> bool {
    contains_as(have, want, Lists::ByPosition)
}

/// [`contains`], except that a list of named entries (containers, env, volumes) holds `want`'s
/// when each of them is contained in an entry of the same name, whatever else the list holds:
/// server-side apply merges such lists by key, so entries another mutating webhook added (an
/// egress proxy's variable, a container of its own) would survive a re-apply, which would change
/// nothing. The controller uses it to tell whether a stored CronJob needs applying again.
pub fn contains_by_name(have: &Value, want: &Value) -> bool {
    contains_as(have, want, Lists::ByName)
}

/// How [`contains_as`] pairs the entries of two lists.
#[derive(Clone, Copy, PartialEq)]
enum Lists {
    ByPosition,
    /// Lists whose entries all have a `name`; others still by position.
    ByName,
}

fn contains_as(have: &Value, want: &Value, lists: Lists) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, wv)| match h.get(k) {
            Some(hv) => contains_as(hv, wv, lists),
            None => is_empty(wv),
        }),
        (Value::Array(h), Value::Array(w)) => {
            let name = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_owned);
            if lists == Lists::ByName && !w.is_empty() && w.iter().all(|wv| name(wv).is_some()) {
                w.iter().all(|wv| {
                    h.iter()
                        .any(|hv| name(hv) == name(wv) && contains_as(hv, wv, lists))
                })
            } else {
                h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains_as(hv, wv, lists))
            }
        }
        _ => have == want,
    }
}

/// The fields the apiserver sets on the injector's entries when they are absent: a
/// container's termination message and pull policy, a ConfigMap volume's mode.
const DEFAULTED: [&str; 4] = [
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "defaultMode",
];

/// [`contains`], and nothing more in `have` than [`DEFAULTED`] fields, and in an `env` list
/// the variables of another webhook (see [`env_owned_as`]).
pub fn is_owned_as(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => {
            h.keys()
                .all(|k| w.contains_key(k) || DEFAULTED.contains(&k.as_str()))
                && w.iter().all(|(k, wv)| match h.get(k) {
                    Some(hv) if k == "env" => env_owned_as(hv, wv),
                    Some(hv) => is_owned_as(hv, wv),
                    None => is_empty(wv),
                })
        }
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| is_owned_as(hv, wv))
        }
        _ => have == want,
    }
}

/// An injected container's env: exactly ours, in order, among the `NOTIFY_` names (a variable an
/// earlier injection set and this one does not, say a dropped policy flag's, must go), plus any
/// other variable, which another mutating webhook added (an egress proxy's `HTTPS_PROXY`):
/// replacing the container would drop it, for good when that webhook is not reinvoked.
fn env_owned_as(have: &Value, want: &Value) -> bool {
    let (Value::Array(h), Value::Array(w)) = (have, want) else {
        return is_owned_as(have, want);
    };
    let name = |v: &Value| v["name"].as_str().map(str::to_owned);
    let ours: Vec<Option<String>> = w.iter().map(name).collect();
    let mine: Vec<Value> = h
        .iter()
        .filter(|v| {
            let n = name(v);
            ours.contains(&n) || n.is_none_or(|n| n.starts_with(ENV_PREFIX))
        })
        .cloned()
        .collect();
    is_owned_as(&Value::Array(mine), want)
}

/// The prefix of every variable the notifier reads (`contract::env`).
const ENV_PREFIX: &str = "NOTIFY_";

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
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
    fn ops_apply_as_json_patch_applies_them() {
        let doc =
            json!({"list": [{"name": "a"}, {"name": "b"}], "m": {"a/b": 1, "c~d": 2}, "s": "x"});
        let add = |p: &str, v: Value| {
            PatchOperation::Add(AddOperation {
                path: PointerBuf::parse(p).unwrap(),
                value: v,
            })
        };
        let replace = |p: &str, v: Value| {
            PatchOperation::Replace(ReplaceOperation {
                path: PointerBuf::parse(p).unwrap(),
                value: v,
            })
        };
        let remove = |p: &str| {
            PatchOperation::Remove(RemoveOperation {
                path: PointerBuf::parse(p).unwrap(),
            })
        };
        let ops = [
            add("/list/0", json!(0)),
            add("/list/1", json!(1)),
            add("/list/2", json!(2)),
            add("/list/3", json!(3)),
            add("/list/-", json!(4)),
            add("/list/01", json!(5)),
            add("/list/x", json!(6)),
            add("/m/a~1b", json!(7)),
            add("/m/new", json!(8)),
            add("/s/0", json!(9)),
            add("/missing/x", json!(10)),
            replace("/list/1/name", json!("z")),
            replace("/m/c~0d", json!(11)),
            replace("/m/none", json!(12)),
            replace("/list/2", json!(13)),
            remove("/list/0"),
            remove("/list/1"),
            remove("/list/2"),
            remove("/list/-"),
            remove("/m/a~1b"),
            remove("/m/none"),
            remove("/s"),
        ];
        for op in ops {
            let mut ours = doc.clone();
            let mut theirs = doc.clone();
            let ok = apply(&mut ours, &op).is_some();
            assert_eq!(
                ok,
                json_patch::patch(&mut theirs, std::slice::from_ref(&op)).is_ok(),
                "{op:?}"
            );
            if ok {
                assert_eq!(ours, theirs, "{op:?}");
            }
        }
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
        assert!(contains(
            &stored,
            &json!({"name": "n", "args": [], "workingDir": ""})
        ));
        assert!(!contains(&stored, &json!({"args": [""]})));
        assert!(!contains(&stored, &json!({"emptyDir": {}})));
        assert!(!contains(
            &stored,
            &json!({"automountServiceAccountToken": false})
        ));
    }
}
