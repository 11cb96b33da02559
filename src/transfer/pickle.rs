//! Python's pickle format, read without Python: the virtual machine of
//! protocols 0 to 5 that `torch.save` (both formats), `pickle.dump` of numpy
//! arrays (Detectron2 weight files) and the reference PixPro's checkpoints
//! use.
//!
//! No crate fits: `serde-pickle` refuses persistent ids (how `torch.save`
//! points at tensor storages) and classes it does not know; libtorch's own
//! unpickler reads only the zip format and stops at any class outside torch
//! (the reference's checkpoint holds an `argparse.Namespace`, Detectron2's
//! files numpy arrays). So this machine builds every class it does not know
//! as an inert [`Value::Object`] and leaves its meaning to the caller
//! (`weights.rs` turns torch's and numpy's into tensors). Nothing is ever
//! imported or executed: a pickle here is data, never code.
use std::collections::HashMap;

/// A pickled value. Containers Python builds with a known constructor
/// (`dict`, `collections.OrderedDict`, `list`, `set`, `_codecs.encode`) are
/// built as such; any other call is kept as an object with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64 (torch's legacy magic number is one),
    /// as its little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A class or function by name, as GLOBAL names it.
    Global {
        module: String,
        name: String,
    },
    /// `callable(*args)`, then `BUILD` with `state` if the pickle had one.
    Object {
        callable: Box<Value>,
        args: Box<Value>,
        state: Option<Box<Value>>,
    },
    /// What the pickler's `persistent_id` returned (torch: a storage).
    Persistent(Box<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The items of a tuple or a list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// `module.name` of a global, or of the callable that made an object.
    pub fn class_name(&self) -> Option<String> {
        match self {
            Value::Global { module, name } => Some(format!("{module}.{name}")),
            Value::Object { callable, .. } => callable.class_name(),
            _ => None,
        }
    }

    /// The value under string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => {
                items.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
            }
            _ => None,
        }
    }
}

/// Why a pickle could not be read, with the byte offset it was at.
#[derive(Debug, Clone, PartialEq)]
pub struct PickleError {
    pub offset: usize,
    pub reason: String,
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pickle byte {}: {}", self.offset, self.reason)
    }
}

/// Reads one pickle from the start of `bytes` up to its STOP opcode, and
/// returns the value with the number of bytes it took (a legacy
/// `torch.save` file is several pickles one after another).
pub fn load(bytes: &[u8]) -> Result<(Value, usize), PickleError> {
    let mut m = Machine {
        bytes,
        pos: 0,
        stack: Vec::new(),
        aliases: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let value = m.run()?;
    Ok((value, m.pos))
}

/// The stack marker of MARK, never seen outside the machine.
const MARK_MSG: &str = "a MARK where a value was expected";

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// The memo keys that name each stack slot's value (same length as
    /// `stack`). Python's memo shares objects; here values are copied, so
    /// when the top value is filled in later (SETITEMS, APPEND, BUILD) the
    /// memo copies named in its slot are refreshed, as sharing would show.
    aliases: Vec<Vec<u64>>,
    /// Stack heights at each MARK, innermost last.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

impl Machine<'_> {
    fn err(&self, reason: impl Into<String>) -> PickleError {
        PickleError { offset: self.pos, reason: reason.into() }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            self.err(format!(
                "the data ends {} bytes early: the file is truncated",
                (self.pos + n).saturating_sub(self.bytes.len())
            ))
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len_u32(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }

    fn len_u64(&mut self) -> Result<usize, PickleError> {
        usize::try_from(u64::from_le_bytes(self.le()?)).map_err(|_| self.err("length overflows"))
    }

    /// A text-protocol line, without its newline.
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.bytes[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("a text line never ends: the file is truncated"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<Value, PickleError> {
        let raw = self.take(n)?.to_vec();
        String::from_utf8(raw).map(Value::Str).map_err(|_| self.err("a string is not UTF-8"))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
        self.aliases.push(Vec::new());
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.err(MARK_MSG));
        }
        self.aliases.pop();
        self.stack.pop().ok_or_else(|| self.err("pop from an empty stack"))
    }

    /// After the top value changed: the memo copies that name it follow.
    fn refresh_top(&mut self) {
        if let (Some(keys), Some(v)) = (self.aliases.last(), self.stack.last()) {
            for k in keys {
                self.memo.insert(*k, v.clone());
            }
        }
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let pos = self.pos;
        self.stack.last_mut().ok_or(PickleError { offset: pos, reason: "empty stack".into() })
    }

    /// Everything pushed since the innermost MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK to pop to"))?;
        if m > self.stack.len() {
            return Err(self.err("the stack shrank below a MARK"));
        }
        self.aliases.truncate(m);
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        let v =
            self.memo.get(&key).cloned().ok_or_else(|| self.err(format!("memo {key} unset")))?;
        self.push(v);
        Ok(())
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let v = self.stack.last().cloned().ok_or_else(|| self.err("memo of an empty stack"))?;
        self.memo.insert(key, v);
        if let Some(keys) = self.aliases.last_mut() {
            keys.push(key);
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of values"));
        }
        let pos = self.pos;
        match self.top()? {
            Value::Dict(d) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    match d.iter_mut().find(|(old, _)| *old == k) {
                        Some(slot) => slot.1 = v,
                        None => d.push((k, v)),
                    }
                }
                self.refresh_top();
                Ok(())
            }
            other => Err(PickleError {
                offset: pos,
                reason: format!("SETITEM on {}, not a dict", kind_name(other)),
            }),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let pos = self.pos;
        match self.top()? {
            Value::List(l) => {
                l.extend(items);
                self.refresh_top();
                Ok(())
            }
            // Sets are built as lists too: order does not matter here.
            _ => Err(PickleError {
                offset: pos,
                reason: "APPEND on something that is not a list".into(),
            }),
        }
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(
                            self.err(format!("pickle protocol {proto} (this reads 0 to 5)"))
                        );
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Value::Int(i64::from(v)));
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Value::Int(i64::from(v)));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { usize::from(self.u8()?) } else { self.len_u32()? };
                    let raw = self.take(n)?.to_vec();
                    self.push(long_from_le(raw));
                }
                b'I' | b'L' => {
                    let line = self.line()?;
                    let t = line.trim_end_matches('L');
                    let v = match t {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(
                            t.parse().map_err(|_| self.err(format!("bad int {line:?}")))?,
                        ),
                    };
                    self.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Value::Float(v));
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line.parse().map_err(|_| self.err(format!("bad float {line:?}")))?;
                    self.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.len_u32()?;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                b'V' => {
                    let line = self.line()?;
                    self.push(Value::Str(unescape_raw_unicode(&line)));
                }
                // Python 2 `str` (protocols 0-2): bytes that were text.
                b'T' | b'U' => {
                    let n = if op == b'U' { usize::from(self.u8()?) } else { self.len_u32()? };
                    let raw = self.take(n)?;
                    let s = raw.iter().map(|&b| char::from(b)).collect();
                    self.push(Value::Str(s));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => usize::from(self.u8()?),
                        b'B' => self.len_u32()?,
                        _ => self.len_u64()?,
                    };
                    let raw = self.take(n)?.to_vec();
                    self.push(Value::Bytes(raw));
                }
                b'}' => self.push(Value::Dict(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b')' => self.push(Value::Tuple(Vec::new())),
                0x8f => self.push(Value::List(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new()));
                    self.set_items(items)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                b't' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.push(if op == b't' { Value::Tuple(items) } else { Value::List(items) });
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => {
                            self.push(Value::Global { module, name })
                        }
                        _ => return Err(self.err("STACK_GLOBAL of non-strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = call(callable, args).map_err(|r| self.err(r))?;
                    self.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = call(callable, args).map_err(|r| self.err(r))?;
                    self.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        Value::Object { state: slot, .. } => *slot = Some(Box::new(state)),
                        // An OrderedDict's attributes (torch: `_metadata`).
                        Value::Dict(_) => {}
                        _ => return Err(self.err("BUILD on a value that is not an object")),
                    }
                    self.refresh_top();
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::Persistent(Box::new(pid)));
                }
                b'P' => {
                    let line = self.line()?;
                    self.push(Value::Persistent(Box::new(Value::Str(line))));
                }
                b'p' => {
                    let line = self.line()?;
                    let key = line.parse().map_err(|_| self.err(format!("bad PUT {line:?}")))?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let key = u64::from(self.u8()?);
                    self.memo_put(key)?;
                }
                b'r' => {
                    let key = u64::from(u32::from_le_bytes(self.le()?));
                    self.memo_put(key)?;
                }
                0x94 => {
                    let key = self.memo.len() as u64;
                    self.memo_put(key)?;
                }
                b'g' => {
                    let line = self.line()?;
                    let key = line.parse().map_err(|_| self.err(format!("bad GET {line:?}")))?;
                    self.memo_get(key)?;
                }
                b'h' => {
                    let key = u64::from(self.u8()?);
                    self.memo_get(key)?;
                }
                b'j' => {
                    let key = u64::from(u32::from_le_bytes(self.le()?));
                    self.memo_get(key)?;
                }
                0x97 | 0x98 => {
                    return Err(self.err("out-of-band buffers (protocol 5) are not supported"))
                }
                other => {
                    self.pos -= 1;
                    return Err(self.err(format!("unknown opcode 0x{other:02x}: not a pickle")));
                }
            }
        }
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) | Value::BigInt(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a str",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Dict(_) => "a dict",
        Value::Global { .. } => "a class",
        Value::Object { .. } => "an object",
        Value::Persistent(_) => "a persistent id",
    }
}

/// LONG1/LONG4's little-endian two's complement, as an i64 where it fits.
fn long_from_le(raw: Vec<u8>) -> Value {
    if raw.len() <= 8 {
        let negative = raw.last().is_some_and(|&b| b & 0x80 != 0);
        let mut a = [if negative { 0xff } else { 0 }; 8];
        a[..raw.len()].copy_from_slice(&raw);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(raw)
    }
}

/// Protocol 0's `raw-unicode-escape`: `\uXXXX` and `\UXXXXXXXX` escapes.
fn unescape_raw_unicode(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.peek(), Some('u') | Some('U')) {
            let n = if chars.next() == Some('u') { 4 } else { 8 };
            let hex: String = chars.by_ref().take(n).collect();
            match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                Some(ch) => out.push(ch),
                None => {
                    out.push('\\');
                    out.push_str(&hex);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// REDUCE: the few constructors whose result is plain data are built;
/// everything else becomes an [`Value::Object`].
fn call(callable: Value, args: Value) -> Result<Value, String> {
    let name = callable.class_name().unwrap_or_default();
    let items = args.as_seq().map(<[Value]>::to_vec).unwrap_or_default();
    Ok(match name.as_str() {
        "collections.OrderedDict" | "builtins.dict" | "__builtin__.dict" => match items.first() {
            None => Value::Dict(Vec::new()),
            Some(Value::Dict(d)) => Value::Dict(d.clone()),
            Some(Value::List(pairs)) => Value::Dict(
                pairs
                    .iter()
                    .filter_map(|p| match p.as_seq() {
                        Some([k, v]) => Some((k.clone(), v.clone())),
                        _ => None,
                    })
                    .collect(),
            ),
            Some(other) => return Err(format!("{name} of {}", kind_name(other))),
        },
        "builtins.list"
        | "__builtin__.list"
        | "builtins.set"
        | "__builtin__.set"
        | "builtins.frozenset"
        | "__builtin__.frozenset" => match items.first() {
            None => Value::List(Vec::new()),
            Some(Value::List(l) | Value::Tuple(l)) => Value::List(l.clone()),
            Some(other) => return Err(format!("{name} of {}", kind_name(other))),
        },
        // How protocol 2 pickles `bytes`: the bytes as latin-1 text.
        "_codecs.encode" => match items.as_slice() {
            [Value::Str(s), Value::Str(enc)] if enc == "latin1" || enc == "latin-1" => {
                Value::Bytes(s.chars().map(|c| c as u32 as u8).collect())
            }
            [Value::Str(s), ..] => Value::Bytes(s.as_bytes().to_vec()),
            _ => return Err("_codecs.encode of something other than a str".into()),
        },
        "builtins.bytes" | "__builtin__.bytes" | "builtins.bytearray" | "__builtin__.bytearray" => {
            match items.first() {
                None => Value::Bytes(Vec::new()),
                Some(Value::Bytes(b)) => Value::Bytes(b.clone()),
                Some(Value::Str(s)) => Value::Bytes(s.chars().map(|c| c as u32 as u8).collect()),
                Some(other) => return Err(format!("{name} of {}", kind_name(other))),
            }
        }
        _ => Value::Object { callable: Box::new(callable), args: Box::new(args), state: None },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortest pickle of `{"a": [1, -2, 70000], "b": (True, None)}` at
    /// protocol 2, written out opcode by opcode as CPython emits it.
    fn small_dict() -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend(b"X\x01\x00\x00\x00a");
        p.extend(b"]q\x01(K\x01J\xfe\xff\xff\xffJ\x70\x11\x01\x00e");
        p.extend(b"X\x01\x00\x00\x00b");
        p.extend([0x88, b'N', 0x86]);
        p.extend(b"u.");
        p
    }

    #[test]
    fn reads_a_protocol_2_dict() {
        let bytes = small_dict();
        let (v, used) = load(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::List(vec![Value::Int(1), Value::Int(-2), Value::Int(70000)])
                ),
                (Value::Str("b".into()), Value::Tuple(vec![Value::Bool(true), Value::None])),
            ])
        );
    }

    #[test]
    fn memo_and_unknown_classes() {
        // [obj, obj] where obj = argparse.Namespace() with state {"x": 1.5}
        let mut p = vec![0x80, 4, 0x95];
        p.extend(0u64.to_le_bytes());
        p.push(b']');
        p.push(0x94);
        p.push(b'(');
        p.extend([0x8c, 8]);
        p.extend(b"argparse");
        p.extend([0x8c, 9]);
        p.extend(b"Namespace");
        p.push(0x93);
        p.push(b')');
        p.push(0x81);
        p.push(0x94);
        p.push(b'}');
        p.extend([0x8c, 1, b'x']);
        p.push(b'G');
        p.extend(1.5f64.to_be_bytes());
        p.push(b's');
        p.push(b'b');
        p.extend([b'h', 1]);
        p.extend(b"e.");
        let (v, _) = load(&p).unwrap();
        let items = v.as_seq().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], items[1]);
        assert_eq!(items[0].class_name().as_deref(), Some("argparse.Namespace"));
        match &items[0] {
            Value::Object { state: Some(s), .. } => {
                assert_eq!(s.get("x"), Some(&Value::Float(1.5)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn big_and_negative_longs() {
        let (v, _) = load(&[0x8a, 2, 0x00, 0xff, b'.']).unwrap();
        assert_eq!(v, Value::Int(-256));
        let mut p = vec![0x8a, 10];
        p.extend([0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
        p.push(b'.');
        let (v, _) = load(&p).unwrap();
        assert!(matches!(v, Value::BigInt(ref b) if b.len() == 10));
    }

    #[test]
    fn latin1_bytes_and_two_pickles_in_a_row() {
        let mut p = vec![0x80, 2, b'c'];
        p.extend(b"_codecs\nencode\n");
        p.extend(b"X\x03\x00\x00\x00\xc3\xbfa"); // "\u{ff}a"
        p.extend(b"X\x06\x00\x00\x00latin1");
        p.extend([0x86, b'R', b'.']);
        let first = p.len();
        p.extend([b'K', 7, b'.']);
        let (v, used) = load(&p).unwrap();
        assert_eq!((v, used), (Value::Bytes(vec![0xff, b'a']), first));
        assert_eq!(load(&p[first..]).unwrap().0, Value::Int(7));
    }

    #[test]
    fn truncated_and_garbage_input_are_errors() {
        let bytes = small_dict();
        for cut in [1, 3, 9, bytes.len() - 1] {
            let e = load(&bytes[..cut]).unwrap_err();
            assert!(e.reason.contains("truncated"), "cut {cut}: {e}");
        }
        let e = load(b"\xff\xfe").unwrap_err();
        assert!(e.reason.contains("not a pickle"), "{e}");
        let e = load(b"(.").unwrap_err();
        assert!(e.reason.contains("MARK"), "{e}");
    }
}
