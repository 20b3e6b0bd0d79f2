//! A rule file as TOML with the byte span of every key and value, so each problem can be
//! reported at its own line and column instead of failing on the first one (which is what a
//! typed serde struct would do).
//!
//! The toml deserializer hands out spans through the `toml::Spanned` protocol, including for
//! table keys; [`Sp`] speaks it and also takes values that have no span. The visitors below
//! accept every TOML shape, so a wrong type becomes a diagnostic of ours, not a failure of the
//! whole file.

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess,
    SeqAccess, Visitor,
};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

/// The map key under which the toml deserializer presents a datetime.
///
/// **NOTE**: private to toml (`toml_datetime::__unstable::FIELD`), unchanged since toml 0.5; a
/// test (`tests::check::odd_shapes_are_reported_not_fatal`) notices if it ever changes.
const DATETIME_KEY: &str = "$__toml_private_datetime";

/// The protocol behind `toml::Spanned` (`serde_spanned::__unstable`): asked for a struct of
/// this name and fields, the toml deserializer answers with a map `{start, end, value}` when it
/// knows the span, and with the plain value when it does not (dotted keys such as
/// `resident.mobility = "..."`, implicit tables, datetime keys). `toml::Spanned` fails on the
/// latter; [`Sp`] takes both.
///
/// **NOTE**: these are serde_spanned 0.6's (the version toml 0.8 uses) unstable names; the
/// position tests fail loudly if they change.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const START: &str = "$__serde_spanned_private_start";
const END: &str = "$__serde_spanned_private_end";
const VALUE: &str = "$__serde_spanned_private_value";

/// A value and, when the deserializer knows it, its byte span in the file.
#[derive(Debug, Clone)]
pub(super) struct Sp<T> {
    pub(super) span: Option<Range<usize>>,
    pub(super) value: T,
}

impl<T> Sp<T> {
    /// The span, or `outer` (the enclosing key or table) when this value has none.
    pub(super) fn at(&self, outer: &Range<usize>) -> Range<usize> {
        self.span.clone().unwrap_or_else(|| outer.clone())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Sp<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(SPANNED, &[START, END, VALUE], SpVisitor(PhantomData))
    }
}

struct SpVisitor<T>(PhantomData<T>);

impl<T> SpVisitor<T> {
    fn plain<'de, E: de::Error, D: Deserializer<'de, Error = E>>(d: D) -> Result<Sp<T>, E>
    where
        T: Deserialize<'de>,
    {
        T::deserialize(d).map(|value| Sp { span: None, value })
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for SpVisitor<T> {
    type Value = Sp<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Sp<T>, E> {
        Self::plain(v.into_deserializer())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Sp<T>, E> {
        Self::plain(v.into_deserializer())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Sp<T>, E> {
        Self::plain(v.into_deserializer())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Sp<T>, E> {
        Self::plain(v.into_deserializer())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Sp<T>, E> {
        Self::plain(v.to_string().into_deserializer())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Sp<T>, A::Error> {
        Self::plain(SeqAccessDeserializer::new(seq))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Sp<T>, A::Error> {
        let first = map.next_key::<String>()?;
        if first.as_deref() != Some(START) {
            // A table (or datetime) without a span: give it back to T, first key included.
            return Self::plain(MapAccessDeserializer::new(Prepend { first, map }));
        }
        let start: usize = map.next_value()?;
        let end = match map.next_key::<String>()?.as_deref() {
            Some(END) => map.next_value::<usize>()?,
            _ => return Err(de::Error::custom("spanned value without an end")),
        };
        match map.next_key::<String>()?.as_deref() {
            Some(VALUE) => map.next_value::<T>().map(|value| Sp {
                span: Some(start..end),
                value,
            }),
            _ => Err(de::Error::custom("spanned value without a value")),
        }
    }
}

/// A map whose first key was already read.
struct Prepend<A> {
    first: Option<String>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Prepend<A> {
    type Error = A::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => self.map.next_key_seed(seed),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// Any TOML value, with spans on nested values.
#[derive(Debug, Clone)]
pub(super) enum SValue {
    Str(String),
    Int(i64),
    Float,
    Bool(bool),
    /// A TOML date/time, as written (e.g. `22:00:00`, which a user may mean as a time window).
    Datetime(String),
    Array(Vec<Sp<SValue>>),
    Table(Vec<(Sp<String>, Sp<SValue>)>),
}

impl SValue {
    /// "a string", "an integer", ...: for "must be X, not Y" messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            SValue::Str(_) => "a string",
            SValue::Int(_) => "an integer",
            SValue::Float => "a float",
            SValue::Bool(_) => "a boolean",
            SValue::Datetime(_) => "a TOML date/time",
            SValue::Array(_) => "a list",
            SValue::Table(_) => "a table",
        }
    }
}

impl<'de> Deserialize<'de> for SValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SValueVisitor)
    }
}

struct SValueVisitor;

impl<'de> Visitor<'de> for SValueVisitor {
    type Value = SValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<SValue, E> {
        Ok(SValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<SValue, E> {
        Ok(SValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SValue, E> {
        i64::try_from(v)
            .map(SValue::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<SValue, E> {
        Ok(SValue::Float)
    }
    fn visit_str<E>(self, v: &str) -> Result<SValue, E> {
        Ok(SValue::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<SValue, E> {
        Ok(SValue::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Sp<SValue>>()? {
            items.push(item);
        }
        Ok(SValue::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Sp<String>>()? {
            if key.value == DATETIME_KEY {
                return Ok(SValue::Datetime(map.next_value::<String>()?));
            }
            entries.push((key, map.next_value::<Sp<SValue>>()?));
        }
        Ok(SValue::Table(entries))
    }
}

/// The entries of one `[[rule]]` or `[fallback]` table, in file order, keys with spans.
pub(super) type Entries = Vec<(Sp<String>, Sp<SValue>)>;

/// A value that should be a table; anything else is kept as `Other` for a diagnostic.
#[derive(Debug)]
pub(super) enum TableOr {
    Table(Entries),
    Other(&'static str),
}

/// A value that should be an array of tables (`[[rule]]`).
#[derive(Debug)]
pub(super) enum TablesOr {
    Tables(Vec<Sp<TableOr>>),
    /// `[rule]`: a single table where an array of tables was meant.
    Table,
    Other(&'static str),
}

/// One rule file: its top-level entries in file order.
#[derive(Debug)]
pub(super) struct Doc {
    pub(super) rules: Vec<(Sp<String>, TablesOr)>,
    pub(super) fallbacks: Vec<(Sp<String>, Sp<TableOr>)>,
    /// Anything else at the top level: reported as unknown.
    pub(super) unknown: Vec<Sp<String>>,
}

/// Visits every non-table shape by turning it into a "wrong kind" marker.
macro_rules! other_shapes {
    ($out:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($out("a boolean"))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($out("an integer"))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($out("an integer"))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($out("a float"))
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($out("a string"))
        }
    };
}

impl<'de> Deserialize<'de> for TableOr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TableOr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            other_shapes!(TableOr::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TableOr, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TableOr::Other("a list"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TableOr, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Sp<String>>()? {
                    if key.value == DATETIME_KEY {
                        map.next_value::<IgnoredAny>()?;
                        return Ok(TableOr::Other("a TOML date/time"));
                    }
                    entries.push((key, map.next_value::<Sp<SValue>>()?));
                }
                Ok(TableOr::Table(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for TablesOr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TablesOr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of tables")
            }
            other_shapes!(TablesOr::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TablesOr, A::Error> {
                let mut tables = Vec::new();
                while let Some(table) = seq.next_element::<Sp<TableOr>>()? {
                    tables.push(table);
                }
                Ok(TablesOr::Tables(tables))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TablesOr, A::Error> {
                let mut shape = TablesOr::Table;
                while let Some(key) = map.next_key::<String>()? {
                    if key == DATETIME_KEY {
                        shape = TablesOr::Other("a TOML date/time");
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(shape)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Doc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rule file")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
                let mut doc = Doc {
                    rules: Vec::new(),
                    fallbacks: Vec::new(),
                    unknown: Vec::new(),
                };
                while let Some(key) = map.next_key::<Sp<String>>()? {
                    match key.value.as_str() {
                        "rule" => {
                            let tables = map.next_value()?;
                            doc.rules.push((key, tables));
                        }
                        "fallback" => {
                            let table = map.next_value()?;
                            doc.fallbacks.push((key, table));
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            doc.unknown.push(key);
                        }
                    }
                }
                Ok(doc)
            }
        }
        d.deserialize_any(V)
    }
}
