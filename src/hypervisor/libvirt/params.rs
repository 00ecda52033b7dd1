//! libvirt typed parameters: build a list to send, read an array that came back.
//!
//! The reader never panics: a parameter of a type it does not know is skipped.
//! Every buffer libvirt allocated is released on Drop.

use std::ffi::{CStr, CString};
use std::os::raw::c_int;
use std::ptr;

use virt::sys;

/// A typed parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i32),
    UInt(u32),
    LLong(i64),
    ULLong(u64),
    Double(f64),
    Bool(bool),
    String(String),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Int(v) => u64::try_from(v).ok(),
            Value::UInt(v) => Some(v.into()),
            Value::LLong(v) => u64::try_from(v).ok(),
            Value::ULLong(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(v) => Some(v.into()),
            Value::UInt(v) => Some(v.into()),
            Value::LLong(v) => Some(v),
            Value::ULLong(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// libvirt's helpers touch its thread-local error state, which must be set up
/// by virInitialize before any call that does not go through a connection.
pub fn init_library() {
    static INIT: std::sync::Once = std::sync::Once::new();
    // SAFETY: virInitialize is idempotent and thread-safe; Once makes it single anyway.
    INIT.call_once(|| unsafe {
        sys::virInitialize();
    });
}

/// Parameters read back from libvirt, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(pub Vec<(String, Value)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    pub fn u64(&self, name: &str) -> Option<u64> {
        self.get(name).and_then(Value::as_u64)
    }
    pub fn i64(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }
}

/// Reads `n` parameters starting at `ptr`.
///
/// # Safety
/// `ptr` must point to `n` initialised `virTypedParameter`s (or be null with n = 0).
pub unsafe fn read(ptr: *const sys::virTypedParameter, n: c_int) -> Params {
    let mut out = Vec::new();
    if ptr.is_null() {
        return Params(out);
    }
    for i in 0..usize::try_from(n).unwrap_or(0) {
        let p = &*ptr.add(i);
        let name = CStr::from_ptr(p.field.as_ptr())
            .to_string_lossy()
            .into_owned();
        let value = match p.type_ as u32 {
            sys::VIR_TYPED_PARAM_INT => Value::Int(p.value.i),
            sys::VIR_TYPED_PARAM_UINT => Value::UInt(p.value.ui),
            sys::VIR_TYPED_PARAM_LLONG => Value::LLong(p.value.l),
            sys::VIR_TYPED_PARAM_ULLONG => Value::ULLong(p.value.ul),
            sys::VIR_TYPED_PARAM_DOUBLE => Value::Double(p.value.d),
            sys::VIR_TYPED_PARAM_BOOLEAN => Value::Bool(p.value.b != 0),
            sys::VIR_TYPED_PARAM_STRING => {
                if p.value.s.is_null() {
                    continue;
                }
                Value::String(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
            }
            _ => continue,
        };
        out.push((name, value));
    }
    Params(out)
}

/// A caller-allocated array for the virDomainGet*Parameters calls; the strings
/// libvirt puts in it are freed on Drop.
pub struct Buffer {
    buf: Vec<sys::virTypedParameter>,
    /// How many entries libvirt filled.
    pub filled: c_int,
}

impl Buffer {
    pub fn new(n: c_int) -> Self {
        let len = usize::try_from(n).unwrap_or(0).max(1);
        // SAFETY: virTypedParameter is plain old data; all-zero is a valid (empty) value.
        let buf = (0..len).map(|_| unsafe { std::mem::zeroed() }).collect();
        Buffer { buf, filled: 0 }
    }
    pub fn as_mut_ptr(&mut self) -> *mut sys::virTypedParameter {
        self.buf.as_mut_ptr()
    }
    pub fn params(&self) -> Params {
        let n = self
            .filled
            .min(c_int::try_from(self.buf.len()).unwrap_or(c_int::MAX));
        // SAFETY: libvirt filled `filled` entries; the rest are zeroed.
        unsafe { read(self.buf.as_ptr(), n) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let n = self
            .filled
            .min(c_int::try_from(self.buf.len()).unwrap_or(c_int::MAX));
        // SAFETY: frees only the strings libvirt allocated inside the entries it filled.
        unsafe { sys::virTypedParamsClear(self.buf.as_mut_ptr(), n) }
    }
}

/// A list of parameters to send, built with libvirt's own helpers and freed on Drop.
pub struct List {
    ptr: sys::virTypedParameterPtr,
    n: c_int,
    max: c_int,
}

/// Building a list failed: a name with a NUL byte, or libvirt refused (out of memory).
#[derive(Debug, thiserror::Error)]
#[error("cannot build typed parameter '{0}'")]
pub struct BuildError(pub String);

impl Default for List {
    fn default() -> Self {
        Self::new()
    }
}

impl List {
    pub fn new() -> Self {
        init_library();
        List {
            ptr: ptr::null_mut(),
            n: 0,
            max: 0,
        }
    }
    fn add(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Self, *const std::os::raw::c_char) -> c_int,
    ) -> Result<(), BuildError> {
        let cname = CString::new(name).map_err(|_| BuildError(name.to_string()))?;
        if f(self, cname.as_ptr()) < 0 {
            return Err(BuildError(name.to_string()));
        }
        Ok(())
    }
    pub fn add_uint(&mut self, name: &str, v: u32) -> Result<(), BuildError> {
        // SAFETY: the helpers grow `ptr` as needed and keep n/max consistent.
        self.add(name, |l, c| unsafe {
            sys::virTypedParamsAddUInt(&mut l.ptr, &mut l.n, &mut l.max, c, v)
        })
    }
    pub fn add_ullong(&mut self, name: &str, v: u64) -> Result<(), BuildError> {
        self.add(name, |l, c| unsafe {
            sys::virTypedParamsAddULLong(&mut l.ptr, &mut l.n, &mut l.max, c, v)
        })
    }
    pub fn add_llong(&mut self, name: &str, v: i64) -> Result<(), BuildError> {
        self.add(name, |l, c| unsafe {
            sys::virTypedParamsAddLLong(&mut l.ptr, &mut l.n, &mut l.max, c, v)
        })
    }
    pub fn add_string(&mut self, name: &str, v: &str) -> Result<(), BuildError> {
        let cv = CString::new(v).map_err(|_| BuildError(name.to_string()))?;
        self.add(name, |l, c| unsafe {
            sys::virTypedParamsAddString(&mut l.ptr, &mut l.n, &mut l.max, c, cv.as_ptr())
        })
    }
    pub fn as_ptr(&self) -> sys::virTypedParameterPtr {
        self.ptr
    }
    pub fn len(&self) -> c_int {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl Drop for List {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by virTypedParamsAdd*; frees entries and the array.
            unsafe { sys::virTypedParamsFree(self.ptr, self.n) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_read_back() {
        let mut l = List::new();
        l.add_uint("a", 7).unwrap();
        l.add_ullong("b", u64::MAX).unwrap();
        l.add_llong("c", -1).unwrap();
        l.add_string("d", "/dev/sda,500").unwrap();
        let p = unsafe { read(l.as_ptr(), l.len()) };
        assert_eq!(p.u64("a"), Some(7));
        assert_eq!(p.u64("b"), Some(u64::MAX));
        assert_eq!(p.i64("c"), Some(-1));
        assert_eq!(p.str("d"), Some("/dev/sda,500"));
        assert!(l.add_string("bad\0name", "x").is_err());
    }

    #[test]
    fn unknown_type_is_skipped_not_panicked() {
        let mut b = Buffer::new(1);
        // SAFETY: writing a field name and an out-of-range type tag into our own buffer.
        unsafe {
            let p = &mut *b.as_mut_ptr();
            p.field[0] = b'x' as _;
            p.type_ = 99;
        }
        b.filled = 1;
        assert!(b.params().0.is_empty());
        b.filled = 0; // nothing of libvirt's to free
    }
}
