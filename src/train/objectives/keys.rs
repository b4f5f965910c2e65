//! Reading one objective's keys of `[train]`: a one-level path-naming wrapper around the
//! deserialiser serde hands an internally tagged variant, so that an error names its key
//! (`train.attack: unknown field ...`, `train.attack is required for objective pgd-at`), keys of
//! the earlier flat layout the objective does not use are type-checked and dropped
//! ([`super::legacy`]), and any other key is refused with the list of valid ones.

use super::TrainObjective;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// An objective's settings, read through [`Fields`]; resolved ([`TrainObjective::resolve`]).
pub struct Keyed<T>(pub T);

impl<'de, T: Deserialize<'de> + TrainObjective> Deserialize<'de> for Keyed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut t = T::deserialize(Fields {
            inner: d,
            objective: T::NAME,
        })?;
        t.resolve();
        Ok(Keyed(t))
    }
}

/// The field names of struct `T` (what its derived `Deserialize` passes to
/// `deserialize_struct`).
pub fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut got: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldProbe(&mut got));
    got
}

struct FieldProbe<'p>(&'p mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;
    fn deserialize_any<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field probe"))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field probe"))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The deserialiser of one objective's keys.
struct Fields<D> {
    inner: D,
    objective: &'static str,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Fields<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_map(StructVisitor {
            visitor,
            fields,
            objective: self.objective,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

struct StructVisitor<V> {
    visitor: V,
    fields: &'static [&'static str],
    objective: &'static str,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for StructVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "the [train] settings of objective {}", self.objective)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let (fields, objective) = (self.fields, self.objective);
        self.visitor
            .visit_map(FieldsMap {
                map,
                fields,
                objective,
                key: String::new(),
            })
            .map_err(|e| {
                // The derived visitor's "missing field `x`": say which objective needs it.
                let m = e.to_string();
                match m
                    .trim()
                    .strip_prefix("missing field `")
                    .and_then(|s| s.strip_suffix('`'))
                {
                    Some(f) if fields.contains(&f) => de::Error::custom(format!(
                        "train.{f} is required for objective {objective}{}",
                        super::legacy::what(f)
                    )),
                    _ => e,
                }
            })
    }
}

struct FieldsMap<A> {
    map: A,
    fields: &'static [&'static str],
    objective: &'static str,
    key: String,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for FieldsMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key::<String>()? else {
                return Ok(None);
            };
            if self.fields.contains(&key.as_str()) {
                let v = seed.deserialize(key.clone().into_deserializer())?;
                self.key = key;
                return Ok(Some(v));
            }
            if super::legacy::KEYS.contains(&key.as_str()) {
                // A key of the earlier layout this objective does not use: checked, dropped.
                self.map
                    .next_value_seed(super::legacy::Check(&key))
                    .map_err(|e| {
                        de::Error::custom(format!("train.{key}: {}", e.to_string().trim()))
                    })?;
                continue;
            }
            return Err(de::Error::custom(format!(
                "train.{key}: unknown field for objective {}; its fields are {}, and those of \
                 every objective {}",
                self.objective,
                list(self.fields),
                list(super::COMMON_KEYS)
            )));
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let key = &self.key;
        self.map
            .next_value_seed(seed)
            .map_err(|e| de::Error::custom(format!("train.{key}: {}", e.to_string().trim())))
    }
}

fn list(keys: &[&str]) -> String {
    let v: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
