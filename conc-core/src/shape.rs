//! The serde shape of a message type: a canonical text computed by driving the type's own
//! `Deserialize` through a tracing deserializer, from which [`crate::TypeTag`]s are hashed.
//!
//! What the text holds: every primitive by kind (`u8`, `str`, `bytes`, …), options, sequences,
//! maps and tuples with their element shapes, and every named container by its serde name with
//! its fields' names and order (structs) or its variants' names, order and contents (enums).
//! Module paths and Rust type names are not in it, so the same type compiled into two programs,
//! or by two toolchains, has the same shape, and two types that differ in any of the above do
//! not.
//!
//! Enums are traced in several passes, one more variant each time, until every variant of every
//! enum met was seen (as `serde-reflection` does). A type whose `Deserialize` cannot be traced
//! this way gives `None`: one that asks for `deserialize_any` (serde's untagged, internally
//! tagged and flattened forms, self-describing values), one that validates its input and refuses
//! the tracer's sample values, and one that contains itself other than through an enum variant
//! already traced, a sequence or a map (`Option<Box<Self>>` in a struct).

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::fmt::{self, Write as _};

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// At most this many passes (each traces at least one new enum variant).
const MAX_PASSES: usize = 4096;
/// At most this deep (containers within containers).
const MAX_DEPTH: usize = 128;

thread_local! {
    /// How many shape traces run on this thread (pids and reply handles inside a message being
    /// traced decode as inert values instead of looking for a node).
    static TRACING: Cell<u32> = const { Cell::new(0) };
}

/// Whether a shape trace runs on this thread.
pub(crate) fn tracing() -> bool {
    TRACING.with(|t| t.get() > 0)
}

/// The canonical shape text of `T`, or `None` if its `Deserialize` cannot be traced.
pub(crate) fn shape_of<T: DeserializeOwned>() -> Option<String> {
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            TRACING.with(|t| t.set(t.get() - 1));
        }
    }
    TRACING.with(|t| t.set(t.get() + 1));
    let _guard = Guard;
    let mut tracer = Tracer::default();
    let mut top = String::new();
    for _ in 0..MAX_PASSES {
        tracer.progress = false;
        top.clear();
        T::deserialize(Shape {
            t: &mut tracer,
            out: &mut top,
            depth: 0,
        })
        .ok()?;
        if tracer
            .enums
            .values()
            .all(|e| e.done.iter().all(Option::is_some))
        {
            return Some(tracer.render(&top));
        }
        if !tracer.progress {
            return None;
        }
    }
    None
}

#[derive(Default)]
struct Tracer {
    /// Enums met, by name and variant list.
    enums: HashMap<(&'static str, &'static [&'static str]), EnumInfo>,
    /// Rendered definitions of structs and tuple structs.
    defs: BTreeSet<String>,
    /// Containers being traced now (for recursion).
    stack: Vec<&'static str>,
    /// Whether this pass traced a variant not traced before.
    progress: bool,
}

struct EnumInfo {
    /// Each variant's rendered content, once traced.
    done: Vec<Option<String>>,
    /// The variants being traced now (an enum inside itself takes another).
    busy: Vec<bool>,
}

impl Tracer {
    fn render(&self, top: &str) -> String {
        let mut defs: BTreeSet<String> = self.defs.clone();
        for ((name, variants), info) in &self.enums {
            let mut def = format!("enum {name}{{");
            for (i, v) in variants.iter().enumerate() {
                let content = info.done[i].as_deref().unwrap_or("?");
                let _ = write!(def, "{v}{content};");
            }
            def.push('}');
            defs.insert(def);
        }
        let mut out = String::from(top);
        for d in defs {
            out.push('\n');
            out.push_str(&d);
        }
        out
    }
}

/// The tracer's error: any failure ends the trace (the type has no shape), but for a container
/// met inside itself, which a sequence or a map turns into an empty one.
#[derive(Debug)]
struct Untraceable {
    what: String,
    recursive: bool,
}

impl fmt::Display for Untraceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Untraceable {}

impl de::Error for Untraceable {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Untraceable {
            what: msg.to_string(),
            recursive: false,
        }
    }
}

fn untraceable<T>(what: &str) -> Result<T, Untraceable> {
    Err(Untraceable {
        what: what.to_string(),
        recursive: false,
    })
}

/// A container met inside itself: rendered by reference (`kind name`) into `out`.
fn recursive<T>(out: &mut String, kind: &str, name: &str) -> Result<T, Untraceable> {
    let _ = write!(out, "{kind} {name}");
    Err(Untraceable {
        what: format!("{name} inside itself"),
        recursive: true,
    })
}

/// The tracing deserializer: renders the shape of the value asked for into `out` and hands the
/// visitor a sample value.
struct Shape<'a> {
    t: &'a mut Tracer,
    out: &'a mut String,
    depth: usize,
}

impl<'a> Shape<'a> {
    fn child<'b>(&'b mut self, out: &'b mut String) -> Result<Shape<'b>, Untraceable> {
        if self.depth >= MAX_DEPTH {
            return untraceable("too deep");
        }
        Ok(Shape {
            t: self.t,
            out,
            depth: self.depth + 1,
        })
    }

    /// Hands the visitor `len` elements (named by `names`, if given) and renders their shapes,
    /// returned with the value.
    fn elements<'de, V: Visitor<'de>>(
        &mut self,
        names: Option<&'static [&'static str]>,
        len: usize,
        visitor: V,
    ) -> Result<(V::Value, String), Untraceable> {
        let mut inner = String::new();
        let value = visitor.visit_seq(Elements {
            shape: self,
            out: &mut inner,
            names,
            len,
            next: 0,
        })?;
        Ok((value, inner))
    }

    /// Renders a struct-like container's fields (`names` for a struct, none for a tuple).
    fn fields<'de, V: Visitor<'de>>(
        mut self,
        name: &'static str,
        kind: &str,
        names: Option<&'static [&'static str]>,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        if self.t.stack.contains(&name) {
            return recursive(self.out, kind, name);
        }
        self.t.stack.push(name);
        let mut def = format!("{kind} {name}(");
        let value = visitor.visit_seq(Elements {
            shape: &mut self,
            out: &mut def,
            names,
            len,
            next: 0,
        });
        self.t.stack.pop();
        let value = value?;
        def.push(')');
        self.t.defs.insert(def);
        let _ = write!(self.out, "{kind} {name}");
        Ok(value)
    }
}

macro_rules! primitive {
    ($($method:ident $visit:ident $name:literal $sample:expr;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Untraceable> {
                self.out.push_str($name);
                visitor.$visit($sample)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Shape<'_> {
    type Error = Untraceable;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Untraceable> {
        untraceable("deserialize_any")
    }

    primitive! {
        deserialize_bool visit_bool "bool" false;
        deserialize_i8 visit_i8 "i8" 1;
        deserialize_i16 visit_i16 "i16" 1;
        deserialize_i32 visit_i32 "i32" 1;
        deserialize_i64 visit_i64 "i64" 1;
        deserialize_i128 visit_i128 "i128" 1;
        deserialize_u8 visit_u8 "u8" 1;
        deserialize_u16 visit_u16 "u16" 1;
        deserialize_u32 visit_u32 "u32" 1;
        deserialize_u64 visit_u64 "u64" 1;
        deserialize_u128 visit_u128 "u128" 1;
        deserialize_f32 visit_f32 "f32" 1.0;
        deserialize_f64 visit_f64 "f64" 1.0;
        deserialize_char visit_char "char" 'a';
        deserialize_str visit_str "str" "";
        deserialize_string visit_string "str" String::new();
        deserialize_bytes visit_bytes "bytes" &[];
        deserialize_byte_buf visit_byte_buf "bytes" Vec::new();
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Untraceable> {
        self.out.push_str("unit");
        visitor.visit_unit()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Untraceable> {
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Untraceable> {
        let mut inner = String::new();
        let value = visitor.visit_some(self.child(&mut inner)?)?;
        let _ = write!(self.out, "option({inner})");
        Ok(value)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        let _ = write!(self.out, "unit_struct {name}");
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        if self.t.stack.contains(&name) {
            return recursive(self.out, "newtype", name);
        }
        self.t.stack.push(name);
        let mut inner = String::new();
        let value = match self.child(&mut inner) {
            Ok(child) => visitor.visit_newtype_struct(child),
            Err(e) => Err(e),
        };
        self.t.stack.pop();
        let value = value?;
        let _ = write!(self.out, "newtype {name}({inner})");
        Ok(value)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Untraceable> {
        let mut inner = String::new();
        let value = visitor.visit_seq(OneElement {
            shape: &mut self,
            out: &mut inner,
            given: false,
        })?;
        let _ = write!(self.out, "seq({inner})");
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        mut self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        let (value, inner) = self.elements(None, len, visitor)?;
        let _ = write!(self.out, "tuple({inner})");
        Ok(value)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        self.fields(name, "tuple_struct", None, len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Untraceable> {
        let mut key = String::new();
        let mut value_shape = String::new();
        let value = visitor.visit_map(OneEntry {
            shape: &mut self,
            key: &mut key,
            value: &mut value_shape,
            state: 0,
        })?;
        let _ = write!(self.out, "map({key},{value_shape})");
        Ok(value)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        self.fields(name, "struct", Some(fields), fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        if variants.is_empty() {
            return untraceable("an enum without variants");
        }
        let key = (name, variants);
        let info = self.t.enums.entry(key).or_insert_with(|| EnumInfo {
            done: vec![None; variants.len()],
            busy: vec![false; variants.len()],
        });
        let inside_itself = info.busy.iter().any(|b| *b);
        let untraced = (0..variants.len()).find(|&i| info.done[i].is_none() && !info.busy[i]);
        let traced = info.done.iter().position(Option::is_some);
        // Inside itself, a variant known to end if there is one (else one not being traced);
        // otherwise the first not traced yet.
        let pick = if inside_itself {
            traced.or(untraced)
        } else {
            untraced.or(Some(0))
        };
        let Some(index) = pick else {
            return recursive(self.out, "enum", name);
        };
        let fresh = info.done[index].is_none();
        info.busy[index] = true;
        self.t.stack.push(name);
        let mut content = String::new();
        let value = visitor.visit_enum(Variant {
            shape: Shape {
                t: self.t,
                out: &mut content,
                depth: self.depth + 1,
            },
            index: index as u32,
        });
        self.t.stack.pop();
        if let Some(info) = self.t.enums.get_mut(&key) {
            info.busy[index] = false;
            if fresh && value.is_ok() {
                info.done[index] = Some(content);
                self.t.progress = true;
            }
        }
        let value = value?;
        let _ = write!(self.out, "enum {name}");
        Ok(value)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Untraceable> {
        untraceable("identifier outside a struct or enum")
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// A sequence of exactly one element (`Vec<T>`, sets): the element's shape is rendered.
struct OneElement<'a, 'b> {
    shape: &'a mut Shape<'b>,
    out: &'a mut String,
    given: bool,
}

impl<'de> SeqAccess<'de> for OneElement<'_, '_> {
    type Error = Untraceable;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Untraceable> {
        if self.given {
            return Ok(None);
        }
        self.given = true;
        match seed.deserialize(self.shape.child(self.out)?) {
            Ok(v) => Ok(Some(v)),
            // `Vec<Self>` inside `Self`: the element is rendered by reference, the sequence is
            // empty.
            Err(e) if e.recursive => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(usize::from(!self.given))
    }
}

/// A fixed number of elements (tuples, struct fields, tuple and struct variants), each
/// rendered, with its field name if it has one.
struct Elements<'a, 'b> {
    shape: &'a mut Shape<'b>,
    out: &'a mut String,
    names: Option<&'static [&'static str]>,
    len: usize,
    next: usize,
}

impl<'de> SeqAccess<'de> for Elements<'_, '_> {
    type Error = Untraceable;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Untraceable> {
        if self.next >= self.len {
            return Ok(None);
        }
        if self.next > 0 {
            self.out.push(',');
        }
        if let Some(name) = self.names.and_then(|n| n.get(self.next)) {
            let _ = write!(self.out, "{name}:");
        }
        self.next += 1;
        let mut element = String::new();
        let value = seed.deserialize(self.shape.child(&mut element)?)?;
        self.out.push_str(&element);
        Ok(Some(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len - self.next)
    }
}

/// A map of exactly one entry: its key's and value's shapes are rendered.
struct OneEntry<'a, 'b> {
    shape: &'a mut Shape<'b>,
    key: &'a mut String,
    value: &'a mut String,
    state: u8,
}

impl<'de> MapAccess<'de> for OneEntry<'_, '_> {
    type Error = Untraceable;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Untraceable> {
        if self.state != 0 {
            return Ok(None);
        }
        self.state = 1;
        match seed.deserialize(self.shape.child(self.key)?) {
            Ok(k) => Ok(Some(k)),
            Err(e) if e.recursive => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Untraceable> {
        if self.state != 1 {
            return untraceable("a map value without its key");
        }
        self.state = 2;
        seed.deserialize(self.shape.child(self.value)?)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(usize::from(self.state == 0))
    }
}

/// The variant an enum trace takes.
struct Variant<'a> {
    shape: Shape<'a>,
    index: u32,
}

impl<'de, 'a> EnumAccess<'de> for Variant<'a> {
    type Error = Untraceable;
    type Variant = Shape<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Shape<'a>), Untraceable> {
        let de: de::value::U32Deserializer<Untraceable> = self.index.into_deserializer();
        Ok((seed.deserialize(de)?, self.shape))
    }
}

impl<'de> VariantAccess<'de> for Shape<'_> {
    type Error = Untraceable;

    fn unit_variant(self) -> Result<(), Untraceable> {
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, Untraceable> {
        let mut inner = String::new();
        let value = seed.deserialize(Shape {
            t: self.t,
            out: &mut inner,
            depth: self.depth,
        })?;
        let _ = write!(self.out, "({inner})");
        Ok(value)
    }

    fn tuple_variant<V: Visitor<'de>>(
        mut self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        let (value, inner) = self.elements(None, len, visitor)?;
        let _ = write!(self.out, "({inner})");
        Ok(value)
    }

    fn struct_variant<V: Visitor<'de>>(
        mut self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Untraceable> {
        let (value, inner) = self.elements(Some(fields), fields.len(), visitor)?;
        let _ = write!(self.out, "{{{inner}}}");
        Ok(value)
    }
}
