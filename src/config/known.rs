//! The settings kiln knows, read off the settings structs themselves, and
//! the check that refuses any other: a key in the file, or a `KILN_*`
//! variable, that names no setting stops kiln, with the nearest known one.
//!
//! The list is what `#[derive(Deserialize)]` hands a deserializer: every
//! struct passes its field names to `deserialize_struct`. [`Probe`] is a
//! deserializer that only writes those names down, so a field added to a
//! settings struct is known here with nothing else to change.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use serde::{
    Deserialize,
    de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor},
};

/// Every setting, as `section` -> its keys.
#[derive(Debug, Clone)]
pub struct Known {
    pub sections: BTreeMap<String, BTreeSet<String>>,
}

impl Known {
    /// The settings of `T` (kiln's `Settings`): its fields are the
    /// sections, each section's fields the keys.
    pub fn of<T: for<'de> Deserialize<'de>>() -> Known {
        let seen = RefCell::new(BTreeMap::<String, BTreeSet<String>>::new());
        // First the sections (every field visited empty, so defaulted),
        // then each section alone, so one section's probe cannot cut
        // another's short.
        let _ = T::deserialize(Probe {
            path: None,
            only: None,
            seen: &seen,
        });
        let sections: Vec<String> = seen.borrow().keys().cloned().collect();
        for section in &sections {
            let _ = T::deserialize(Probe {
                path: None,
                only: Some(section),
                seen: &seen,
            });
        }
        Known {
            sections: seen.into_inner(),
        }
    }

    pub fn is_key(&self, section: &str, key: &str) -> bool {
        self.sections.get(section).is_some_and(|k| k.contains(key))
    }

    /// Every setting as `section.key`.
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.sections
            .iter()
            .flat_map(|(s, keys)| keys.iter().map(move |k| format!("{s}.{k}")))
    }

    /// `WORKER_CONCURRENCY` (after `KILN_`, any case) -> `("worker",
    /// "concurrency")`: the section whose name it starts with, preferring
    /// one that makes the rest a known key (section names hold
    /// underscores: `rate_limits`, `reference_images`).
    pub fn split_env<'a>(&'a self, name: &str) -> Option<(&'a str, String)> {
        let name = name.to_ascii_lowercase();
        let candidates: Vec<(&str, String)> = self
            .sections
            .keys()
            .filter_map(|section| {
                name.strip_prefix(section.as_str())
                    .and_then(|rest| rest.strip_prefix('_'))
                    .filter(|rest| !rest.is_empty())
                    .map(|rest| (section.as_str(), rest.to_owned()))
            })
            .collect();
        candidates
            .iter()
            .find(|(s, k)| self.is_key(s, k))
            .or_else(|| candidates.iter().max_by_key(|(s, _)| s.len()))
            .cloned()
    }

    /// The known setting nearest to `wanted` (`section.key`, or a bare
    /// section or key), when one is near enough to be a likely typo.
    /// Sections are candidates too when `sections` (a file's tables).
    pub fn nearest(&self, wanted: &str, sections: bool) -> Option<String> {
        let wanted = wanted.to_ascii_lowercase();
        let mut candidates: Vec<String> = self.paths().collect();
        if sections {
            candidates.extend(self.sections.keys().cloned());
        }
        // A key given without its section: `KILN_CONCURRENCY`.
        if let Some(path) = self.paths().find(|p| {
            p.split_once('.')
                .is_some_and(|(_, key)| key == wanted || key == wanted.replace('.', "_"))
        }) {
            return Some(path);
        }
        // `_` and `.` are the same separator to a reader of env names.
        let flat = |s: &str| s.replace('.', "_");
        let (best, distance) = candidates
            .iter()
            .map(|c| (c, strsim::damerau_levenshtein(&flat(c), &flat(&wanted))))
            .min_by_key(|(c, d)| (*d, c.len()))?;
        (distance <= (wanted.len() / 3).max(2)).then(|| best.clone())
    }
}

/// `KILN_WORKER_CONCURRENCY` for `worker.concurrency`.
pub fn env_name(path: &str) -> String {
    format!("KILN_{}", path.replace('.', "_").to_ascii_uppercase())
}

/// A deserializer that records the field names each struct declares.
struct Probe<'a> {
    /// The section being probed; `None` at the top.
    path: Option<&'a str>,
    /// At the top: the one section to descend into (none: no section).
    only: Option<&'a str>,
    seen: &'a RefCell<BTreeMap<String, BTreeSet<String>>>,
}

#[derive(Debug)]
struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Stop(msg.to_string())
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    /// Anything but a struct: not a section, nothing to record.
    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop("not a struct".into()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let descend = match self.path {
            None => {
                let mut seen = self.seen.borrow_mut();
                for field in fields {
                    seen.entry((*field).to_owned()).or_default();
                }
                self.only
            }
            Some(section) => {
                self.seen
                    .borrow_mut()
                    .entry(section.to_owned())
                    .or_default()
                    .extend(fields.iter().map(|f| (*f).to_owned()));
                None
            }
        };
        visitor.visit_map(Fields {
            next: descend,
            seen: self.seen,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// A struct's body with at most one field (a section at the top), whose
/// value is probed in turn; every other field takes its default.
struct Fields<'a> {
    next: Option<&'a str>,
    seen: &'a RefCell<BTreeMap<String, BTreeSet<String>>>,
}

impl<'de, 'a> MapAccess<'de> for Fields<'a> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        match self.next {
            Some(field) => seed
                .deserialize(IntoDeserializer::<Stop>::into_deserializer(field))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        let section = self.next.take().ok_or_else(|| Stop("no field".into()))?;
        seed.deserialize(Probe {
            path: Some(section),
            only: None,
            seen: self.seen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    #[allow(dead_code)]
    struct Outer {
        first: Inner,
        second: Other,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    #[allow(dead_code)]
    struct Inner {
        size: u32,
        name: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    #[allow(dead_code)]
    struct Other {
        addr: String,
        table: BTreeMap<String, u32>,
    }

    #[test]
    fn the_keys_are_read_off_the_structs() {
        let known = Known::of::<Outer>();
        assert_eq!(
            known.paths().collect::<Vec<_>>(),
            ["first.name", "first.size", "second.addr", "second.table"]
        );
    }

    #[test]
    fn env_names_split_at_the_section() {
        let known = Known::of::<Outer>();
        assert_eq!(
            known.split_env("FIRST_SIZE"),
            Some(("first", "size".to_owned()))
        );
        assert_eq!(known.split_env("FIRST"), None);
        assert_eq!(known.split_env("THIRD_SIZE"), None);
    }

    #[test]
    fn the_nearest_is_a_likely_typo_or_nothing() {
        let known = Known::of::<Outer>();
        assert_eq!(
            known.nearest("first.sise", false).as_deref(),
            Some("first.size")
        );
        assert_eq!(
            known.nearest("frist_size", false).as_deref(),
            Some("first.size")
        );
        assert_eq!(
            known.nearest("table", false).as_deref(),
            Some("second.table")
        );
        assert_eq!(known.nearest("secnd", true).as_deref(), Some("second"));
        assert_eq!(known.nearest("secnd", false), None);
        assert_eq!(known.nearest("something.else.entirely", true), None);
    }
}
