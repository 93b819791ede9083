//! TensorFlow Lite's C API, loaded at run time from `libtensorflowlite_c.so`
//! (the one the `pymicro-wakeword` wheel ships, unpacked by
//! `scripts/setup-wake.sh`). Loading it instead of linking keeps 4.8 MB of
//! native code out of the binary and off every install that has no wake
//! word; a missing or wrong library is an error that names the file.
//!
//! Only what a streaming int8 model needs: load, allocate, copy in, invoke,
//! copy out, with the tensors' shapes and quantization.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dl;

/// Largest model file accepted (the shipped ones are 50–80 KB).
pub const MAX_MODEL_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TfliteError {
    #[error(
        "cannot load TensorFlow Lite from {}: {cause} (install it with scripts/setup-wake.sh, or set engines.NAME.library)",
        path.display()
    )]
    Library { path: PathBuf, cause: String },
    #[error("{}: {message}", path.display())]
    Model { path: PathBuf, message: String },
}

type Status = c_int;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct QuantParams {
    scale: f32,
    zero_point: i32,
}

/// The C functions used, resolved once.
struct Api {
    version: unsafe extern "C" fn() -> *const c_char,
    model_create: unsafe extern "C" fn(*const c_void, usize) -> *mut c_void,
    model_delete: unsafe extern "C" fn(*mut c_void),
    options_create: unsafe extern "C" fn() -> *mut c_void,
    options_threads: unsafe extern "C" fn(*mut c_void, i32),
    options_delete: unsafe extern "C" fn(*mut c_void),
    interpreter_create: unsafe extern "C" fn(*const c_void, *const c_void) -> *mut c_void,
    interpreter_delete: unsafe extern "C" fn(*mut c_void),
    allocate: unsafe extern "C" fn(*mut c_void) -> Status,
    invoke: unsafe extern "C" fn(*mut c_void) -> Status,
    input: unsafe extern "C" fn(*const c_void, i32) -> *mut c_void,
    output: unsafe extern "C" fn(*const c_void, i32) -> *const c_void,
    tensor_type: unsafe extern "C" fn(*const c_void) -> c_int,
    num_dims: unsafe extern "C" fn(*const c_void) -> i32,
    dim: unsafe extern "C" fn(*const c_void, i32) -> i32,
    byte_size: unsafe extern "C" fn(*const c_void) -> usize,
    quant: unsafe extern "C" fn(*const c_void) -> QuantParams,
    copy_from: unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> Status,
    copy_to: unsafe extern "C" fn(*const c_void, *mut c_void, usize) -> Status,
    resize: unsafe extern "C" fn(*mut c_void, i32, *const c_int, i32) -> Status,
}

/// A loaded `libtensorflowlite_c`.
pub struct Library {
    api: Api,
    path: PathBuf,
    _lib: libloading::Library,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Library({})", self.path.display())
    }
}

impl Library {
    pub fn load(path: &Path) -> Result<Arc<Library>, TfliteError> {
        let err = |cause: String| TfliteError::Library {
            path: path.to_path_buf(),
            cause,
        };
        // SAFETY: loading runs the library's initialisers; this is the
        // TensorFlow Lite C library the setup script unpacked.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| err(e.to_string()))?;
        let missing = |e: String| err(format!("{e} (not TensorFlow Lite's C library?)"));
        // SAFETY: each field has the type of the C API's declaration of its
        // symbol.
        let api = unsafe {
            Api {
                version: dl::function(&lib, b"TfLiteVersion\0").map_err(missing)?,
                model_create: dl::function(&lib, b"TfLiteModelCreate\0").map_err(missing)?,
                model_delete: dl::function(&lib, b"TfLiteModelDelete\0").map_err(missing)?,
                options_create: dl::function(&lib, b"TfLiteInterpreterOptionsCreate\0")
                    .map_err(missing)?,
                options_threads: dl::function(&lib, b"TfLiteInterpreterOptionsSetNumThreads\0")
                    .map_err(missing)?,
                options_delete: dl::function(&lib, b"TfLiteInterpreterOptionsDelete\0")
                    .map_err(missing)?,
                interpreter_create: dl::function(&lib, b"TfLiteInterpreterCreate\0")
                    .map_err(missing)?,
                interpreter_delete: dl::function(&lib, b"TfLiteInterpreterDelete\0")
                    .map_err(missing)?,
                allocate: dl::function(&lib, b"TfLiteInterpreterAllocateTensors\0")
                    .map_err(missing)?,
                invoke: dl::function(&lib, b"TfLiteInterpreterInvoke\0").map_err(missing)?,
                input: dl::function(&lib, b"TfLiteInterpreterGetInputTensor\0").map_err(missing)?,
                output: dl::function(&lib, b"TfLiteInterpreterGetOutputTensor\0")
                    .map_err(missing)?,
                tensor_type: dl::function(&lib, b"TfLiteTensorType\0").map_err(missing)?,
                num_dims: dl::function(&lib, b"TfLiteTensorNumDims\0").map_err(missing)?,
                dim: dl::function(&lib, b"TfLiteTensorDim\0").map_err(missing)?,
                byte_size: dl::function(&lib, b"TfLiteTensorByteSize\0").map_err(missing)?,
                quant: dl::function(&lib, b"TfLiteTensorQuantizationParams\0").map_err(missing)?,
                copy_from: dl::function(&lib, b"TfLiteTensorCopyFromBuffer\0").map_err(missing)?,
                copy_to: dl::function(&lib, b"TfLiteTensorCopyToBuffer\0").map_err(missing)?,
                resize: dl::function(&lib, b"TfLiteInterpreterResizeInputTensor\0")
                    .map_err(missing)?,
            }
        };
        Ok(Arc::new(Library {
            api,
            path: path.to_path_buf(),
            _lib: lib,
        }))
    }

    /// The library's version string (e.g. "2.17.1").
    pub fn version(&self) -> String {
        // SAFETY: returns a static NUL-terminated string.
        unsafe { CStr::from_ptr((self.api.version)()) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// kTfLiteFloat32 / kTfLiteInt8 / kTfLiteUInt8 in the C API's type enum.
const FLOAT32: c_int = 1;
const INT8: c_int = 9;
const UINT8: c_int = 3;

/// A model file and its interpreter, with its first input and output.
struct Interpreter {
    lib: Arc<Library>,
    path: PathBuf,
    /// The model's bytes: TensorFlow Lite reads them in place for the
    /// model's whole life.
    _bytes: Vec<u8>,
    model: *mut c_void,
    interpreter: *mut c_void,
    input: *mut c_void,
    output: *const c_void,
}

impl Drop for Interpreter {
    fn drop(&mut self) {
        // SAFETY: created by this library, deleted once, interpreter first.
        unsafe {
            (self.lib.api.interpreter_delete)(self.interpreter);
            (self.lib.api.model_delete)(self.model);
        }
    }
}

impl Interpreter {
    /// Loads a model file (size checked first), gives its input the shape
    /// `input` if one is given, and allocates its tensors.
    fn open(lib: &Arc<Library>, path: &Path, input: Option<&[c_int]>) -> Result<Self, TfliteError> {
        let err = |message: String| TfliteError::Model {
            path: path.to_path_buf(),
            message,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| err(format!("cannot read: {e}")))?
            .len();
        if len > MAX_MODEL_BYTES {
            return Err(err(format!(
                "{len} bytes is larger than a wake word model can be ({MAX_MODEL_BYTES} bytes)"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if bytes.len() < 8 || &bytes[4..8] != b"TFL3" {
            return Err(err("not a TensorFlow Lite model (no TFL3 mark)".into()));
        }
        let api = &lib.api;
        // SAFETY: the C API is used as documented; every pointer is checked
        // for null before use and the bytes outlive the model.
        unsafe {
            let model = (api.model_create)(bytes.as_ptr().cast(), bytes.len());
            if model.is_null() {
                return Err(err("TensorFlow Lite cannot read this model".into()));
            }
            let opts = (api.options_create)();
            if !opts.is_null() {
                (api.options_threads)(opts, 1);
            }
            let interpreter = (api.interpreter_create)(model, opts);
            if !opts.is_null() {
                (api.options_delete)(opts);
            }
            if interpreter.is_null() {
                (api.model_delete)(model);
                return Err(err("TensorFlow Lite cannot build an interpreter for this model (an operation it lacks?)".into()));
            }
            let mut it = Interpreter {
                lib: lib.clone(),
                path: path.to_path_buf(),
                _bytes: bytes,
                model,
                interpreter,
                input: std::ptr::null_mut(),
                output: std::ptr::null(),
            };
            if let Some(dims) = input {
                it.input = (api.input)(interpreter, 0);
                if it.input.is_null() {
                    return Err(err("the model has no input tensor".into()));
                }
                let shape = it.input_shape();
                if shape.len() != dims.len()
                    || (api.resize)(interpreter, 0, dims.as_ptr(), dims.len() as i32) != 0
                {
                    return Err(err(format!(
                        "its input is {shape:?}; it cannot take the shape {dims:?}"
                    )));
                }
            }
            if (api.allocate)(interpreter) != 0 {
                return Err(err("cannot allocate the model's tensors".into()));
            }
            it.input = (api.input)(interpreter, 0);
            it.output = (api.output)(interpreter, 0);
            if it.input.is_null() || it.output.is_null() {
                return Err(err("the model has no input or output tensor".into()));
            }
            Ok(it)
        }
    }

    fn err(&self, message: impl Into<String>) -> TfliteError {
        TfliteError::Model {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// The input's shape.
    fn input_shape(&self) -> Vec<usize> {
        let api = &self.lib.api;
        // SAFETY: the input tensor lives as long as the interpreter.
        unsafe {
            (0..(api.num_dims)(self.input).max(0))
                .map(|d| (api.dim)(self.input, d).max(0) as usize)
                .collect()
        }
    }

    /// Copies `input` in, runs the model, copies the output to `output`;
    /// both byte sizes were checked against the tensors by the caller.
    fn invoke(&mut self, input: &[u8], output: &mut [u8]) -> Result<(), TfliteError> {
        let api = &self.lib.api;
        // SAFETY: the buffers' sizes equal the tensors' (checked at load).
        let ok = unsafe {
            (api.copy_from)(self.input, input.as_ptr().cast(), input.len()) == 0
                && (api.invoke)(self.interpreter) == 0
                && (api.copy_to)(self.output, output.as_mut_ptr().cast(), output.len()) == 0
        };
        if ok {
            Ok(())
        } else {
            Err(self.err("inference failed"))
        }
    }
}

/// One int8 streaming model with its interpreter (its state persists
/// between invocations). Not shared between threads; movable.
pub struct Model {
    it: Interpreter,
    /// Input shape [1, stride, features].
    pub stride: usize,
    pub features: usize,
    in_scale: f32,
    in_zero: i32,
    in_unsigned: bool,
    out_scale: f32,
    out_zero: i32,
    out_unsigned: bool,
    quantized: Vec<u8>,
}

// SAFETY: the interpreter is only ever used through `&mut self`, by one
// thread at a time; TensorFlow Lite keeps no thread-local state for it.
unsafe impl Send for Model {}

impl Model {
    /// Loads a microWakeWord model file (size checked first) and prepares it.
    pub fn load(lib: &Arc<Library>, path: &Path) -> Result<Model, TfliteError> {
        let it = Interpreter::open(lib, path, None)?;
        let api = &lib.api;
        // SAFETY: the tensors live as long as the interpreter.
        let (it_type, ot_type, in_size, out_size, iq, oq) = unsafe {
            (
                (api.tensor_type)(it.input),
                (api.tensor_type)(it.output),
                (api.byte_size)(it.input),
                (api.byte_size)(it.output),
                (api.quant)(it.input),
                (api.quant)(it.output),
            )
        };
        if !matches!(it_type, INT8 | UINT8) || !matches!(ot_type, INT8 | UINT8) {
            return Err(it.err(format!(
                "tensors of type {it_type}/{ot_type}; a microWakeWord model is quantized to 8 bits"
            )));
        }
        let shape = it.input_shape();
        let [_, stride, features] = shape[..] else {
            return Err(it.err("the input is not [1, stride, features]"));
        };
        if stride == 0 || features == 0 || in_size != stride * features {
            return Err(it.err(format!(
                "input of {in_size} bytes for {stride}x{features} features"
            )));
        }
        if out_size != 1 {
            return Err(it.err("the output is not one probability"));
        }
        if iq.scale <= 0.0 || oq.scale <= 0.0 {
            return Err(it.err("the model is not quantized"));
        }
        Ok(Model {
            it,
            stride,
            features,
            in_scale: iq.scale,
            in_zero: iq.zero_point,
            in_unsigned: it_type == UINT8,
            out_scale: oq.scale,
            out_zero: oq.zero_point,
            out_unsigned: ot_type == UINT8,
            quantized: vec![0; in_size],
        })
    }

    /// Runs the model on `stride` feature rows (each `features` long, in
    /// the models' float scale); returns the probability.
    pub fn run(&mut self, rows: &[f32]) -> Result<f32, TfliteError> {
        if rows.len() != self.quantized.len() {
            return Err(self.it.err(format!(
                "given {} features, takes {}",
                rows.len(),
                self.quantized.len()
            )));
        }
        for (q, f) in self.quantized.iter_mut().zip(rows) {
            let v = (f / self.in_scale + self.in_zero as f32).round();
            *q = if self.in_unsigned {
                v.clamp(0.0, 255.0) as u8
            } else {
                v.clamp(-128.0, 127.0) as i8 as u8
            };
        }
        let mut out = [0u8; 1];
        self.it.invoke(&self.quantized, &mut out)?;
        let raw = if self.out_unsigned {
            out[0] as f32
        } else {
            out[0] as i8 as f32
        };
        Ok((raw - self.out_zero as f32) * self.out_scale)
    }
}

/// One float32 model (openWakeWord's): a fixed input shape in, floats out.
/// Stateless between invocations. Not shared between threads; movable.
pub struct FloatModel {
    it: Interpreter,
    input: Vec<u8>,
    output: Vec<u8>,
}

// SAFETY: as for `Model`.
unsafe impl Send for FloatModel {}

impl FloatModel {
    /// Loads a float model; `input` resizes its input (a model whose input
    /// length is free, like openWakeWord's melspectrogram), and `expect`
    /// is the input shape the caller feeds, checked.
    pub fn load(
        lib: &Arc<Library>,
        path: &Path,
        input: Option<&[c_int]>,
        expect: &[usize],
    ) -> Result<FloatModel, TfliteError> {
        let it = Interpreter::open(lib, path, input)?;
        let api = &lib.api;
        // SAFETY: the tensors live as long as the interpreter.
        let (it_type, ot_type, in_size, out_size) = unsafe {
            (
                (api.tensor_type)(it.input),
                (api.tensor_type)(it.output),
                (api.byte_size)(it.input),
                (api.byte_size)(it.output),
            )
        };
        if it_type != FLOAT32 || ot_type != FLOAT32 {
            return Err(it.err(format!(
                "tensors of type {it_type}/{ot_type}; an openWakeWord model takes and gives float32"
            )));
        }
        let shape = it.input_shape();
        if shape != expect || in_size != expect.iter().product::<usize>() * 4 {
            return Err(it.err(format!("its input is {shape:?}, expected {expect:?}")));
        }
        if out_size == 0 || out_size % 4 != 0 || out_size > 1 << 20 {
            return Err(it.err(format!("an output of {out_size} bytes")));
        }
        Ok(FloatModel {
            it,
            input: vec![0; in_size],
            output: vec![0; out_size],
        })
    }

    /// Floats in the output.
    pub fn outputs(&self) -> usize {
        self.output.len() / 4
    }

    /// Runs the model on `input` (exactly the input's length); the output
    /// goes to `out` (cleared first).
    pub fn run(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), TfliteError> {
        if input.len() * 4 != self.input.len() {
            return Err(self.it.err(format!(
                "given {} floats, takes {}",
                input.len(),
                self.input.len() / 4
            )));
        }
        for (b, f) in self.input.chunks_exact_mut(4).zip(input) {
            b.copy_from_slice(&f.to_ne_bytes());
        }
        self.it.invoke(&self.input, &mut self.output)?;
        out.clear();
        out.extend(
            self.output
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(())
    }
}
