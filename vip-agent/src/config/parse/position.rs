//! Where a key sits in the YAML text, for messages about keys that are ignored.
//!
//! A parsed [`serde_norway::Value`] keeps no positions, but the parser positions every error it
//! reports: walking the text again with a visitor that fails on the wanted key yields the line of
//! that key as the parser saw it (block or flow style, quoted or plain).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step from the document's root: a key of a mapping, or an item of a list.
#[derive(Clone, Copy)]
pub(in crate::config) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The message of the error the walk stops with when it reaches the key.
const FOUND: &str = "vip-agent: the key is here";

/// The line (1-based) of the key that `path` ends in, when the text has it there (a key that came
/// in through a merge key `<<` has no line of its own in the mapping).
pub(in crate::config) fn key_line(yaml: &str, path: &[Step<'_>]) -> Option<usize> {
    let walk = Walk { path };
    match walk.deserialize(serde_norway::Deserializer::from_str(yaml)) {
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| l.line()),
        _ => None,
    }
}

/// Follows `path` through mappings and lists, skipping everything else.
#[derive(Clone, Copy)]
struct Walk<'a> {
    path: &'a [Step<'a>],
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or a list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((&Step::Key(wanted), rest)) = self.path.split_first() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        while let Some(hit) = map.next_key_seed(KeyIs {
            wanted,
            last: rest.is_empty(),
        })? {
            if hit {
                map.next_value_seed(Walk { path: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((&Step::Index(wanted), rest)) = self.path.split_first() else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        let mut i = 0;
        loop {
            let more = if i == wanted {
                seq.next_element_seed(Walk { path: rest })?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// Reads one key: whether it is the wanted one; an error positioned at it when it is the last
/// step of the path.
struct KeyIs<'a> {
    wanted: &'a str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        match (key == self.wanted, self.last) {
            (true, true) => Err(E::custom(FOUND)),
            (hit, _) => Ok(hit),
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::{Step, key_line};

    #[test]
    fn finds_keys_in_block_and_flow_style_and_in_list_entries() {
        let yaml = "a: 1\n\"b\": {c: 2}\nvips:\n  - x: 1\n  - {y: 2,\n     z: 3}\n";
        assert_eq!(key_line(yaml, &[Step::Key("a")]), Some(1));
        assert_eq!(key_line(yaml, &[Step::Key("b")]), Some(2));
        assert_eq!(key_line(yaml, &[Step::Key("b"), Step::Key("c")]), Some(2));
        let z = [Step::Key("vips"), Step::Index(1), Step::Key("z")];
        assert_eq!(key_line(yaml, &z), Some(6));
        let x = [Step::Key("vips"), Step::Index(0), Step::Key("x")];
        assert_eq!(key_line(yaml, &x), Some(4));
        assert_eq!(key_line(yaml, &[Step::Key("nope")]), None);
        assert_eq!(key_line("- 1\n", &[Step::Key("a")]), None);
        assert_eq!(key_line(": : :", &[Step::Key("a")]), None);
    }
}
