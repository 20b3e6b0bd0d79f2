//! Names a rule can match on that other stages must also accept: a resident attribute a rule
//! names is one a resident import can store. A leaf, so residents can ask the rules without
//! reaching into how rules are parsed.

/// Whether `name` can be a resident attribute: what a rule's `resident = { NAME = ... }` can
/// match on, so the rules own the spelling and a resident import checks against it.
pub fn attribute_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
