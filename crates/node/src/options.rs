//! Option and spec JSON from the facade, parsed with errors that name the field: `model spec: layer 0 (lstm):
//! hiddenSize must be a non-negative integer, got null` rather than serde's `invalid type: null, expected usize
//! at line 1 column 52` (the JSON was written by the facade, so its lines and columns mean nothing to users).

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::type_error;

/// Parses `json` as a `T`; `what` names it in errors (`model spec`, `compile options`).
pub fn parse_json<T: DeserializeOwned>(what: &str, json: &str) -> napi::Result<T> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let value: Value = serde_json::from_str(json).unwrap_or(Value::Null);
        type_error(format!("{what}{}", explain(&path, &value, &without_position(&inner))))
    })
}

/// serde_json's message without its ` at line N column M`.
fn without_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) if e.line() > 0 => s[..i].to_string(),
        _ => s,
    }
}

/// `: <where>: <message>`, with the field the message is about named when it can be told.
fn explain(path: &str, root: &Value, message: &str) -> String {
    // serde's path: `.` for the root, `layers[0]`, `optimizer.learningRate`; elements of internally tagged
    // enums (a layer) are as deep as it sees.
    let (mut place, node, element) = locate(path, root);
    let message = plain_words(message);
    if let Some((found, expected)) = wrong_value(&message) {
        let field = match node {
            // The path ends at the field itself.
            Some(v) if !element && unexpected(v) == found => place.pop(),
            // Inside a tagged enum (a layer) serde does not say which field it was: the one holding what it found.
            Some(Value::Object(o)) => match o.iter().filter(|(_, v)| unexpected(v) == found).collect::<Vec<_>>()[..] {
                [(k, _)] => Some(k.clone()),
                _ => None,
            },
            _ if !element => place.pop(),
            _ => None,
        };
        let at: String = place.iter().map(|p| format!("{p}: ")).collect();
        return match field {
            Some(f) => format!(": {at}{f} must be {expected}, got {}", shown(found)),
            None => format!(": {at}expected {expected}, got {}", shown(found)),
        };
    }
    if place.is_empty() { format!(": {message}") } else { format!(": {}: {message}", place.join(": ")) }
}

/// The path's parts as users name them (`layer 0 (lstm)`, `optimizer`, `learningRate`), the JSON there, and
/// whether the path ends at an element of an array (a layer) rather than at a field.
fn locate<'a>(path: &str, root: &'a Value) -> (Vec<String>, Option<&'a Value>, bool) {
    let mut place = Vec::new();
    let mut node = Some(root);
    let mut element = false;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, index) = match part.find('[') {
            Some(i) => (&part[..i], part[i + 1..].trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        node = node.and_then(|n| n.get(name));
        element = index.is_some();
        match index {
            Some(i) => {
                node = node.and_then(|n| n.get(i));
                let kind = node.and_then(|n| n.get("type")).and_then(Value::as_str);
                place.push(match (name, kind) {
                    ("layers", Some(k)) => format!("layer {i} ({k})"),
                    ("layers", None) => format!("layer {i}"),
                    (n, _) => format!("{n}[{i}]"),
                });
            }
            None => place.push(name.to_string()),
        }
    }
    (place, node, element)
}

/// `invalid type: null, expected a non-negative integer` as (`null`, `a non-negative integer`).
fn wrong_value(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("invalid type: ").or_else(|| message.strip_prefix("invalid value: "))?;
    rest.rsplit_once(", expected ")
}

/// serde's name for a JSON value, as it appears in `invalid type: ...`.
fn unexpected(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "sequence".into(),
        Value::Object(_) => "map".into(),
    }
}

/// serde's name for a value, as users would write it: `integer \`-3\`` is `-3`, `sequence` an array.
fn shown(found: &str) -> String {
    let tick = |s: &str| s.split('`').nth(1).map(str::to_string);
    match found {
        "sequence" => "an array".into(),
        "map" => "an object".into(),
        f if f.starts_with("integer") || f.starts_with("floating point") || f.starts_with("boolean") => {
            tick(f).unwrap_or_else(|| f.to_string())
        }
        f => f.strip_prefix("string ").map(|s| s.to_string()).unwrap_or_else(|| f.to_string()),
    }
}

/// serde's Rust type names in words.
fn plain_words(message: &str) -> String {
    let mut s = message.to_string();
    for (rust, words) in [
        ("expected usize", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected variant identifier", "expected a type name"),
    ] {
        if let Some(i) = s.find(rust)
            && s[i + rust.len()..].chars().next().is_none_or(|c| !c.is_alphanumeric())
        {
            s.replace_range(i..i + rust.len(), words);
        }
    }
    // `internally tagged enum LossSpec`: an object whose `type` picks the kind.
    const TAGGED: &str = "internally tagged enum ";
    if let Some(i) = s.find(TAGGED) {
        let name = i + TAGGED.len();
        let end = s[name..].find(|c: char| !c.is_alphanumeric()).map_or(s.len(), |j| name + j);
        s.replace_range(i..end, "an object with a `type`");
    }
    s
}
