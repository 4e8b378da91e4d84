//! The HDF5 reader wrapper: typed, size-checked reads with errors that name the file and path.
//!
//! Owns: opening the file with the pure-Rust `hdf5-reader` crate, telling "this path does not
//! exist" apart from "this file is damaged", and reading a dataset with its exact stored
//! datatype (index columns are uint8/16/32/64 depending on size, bools are 1-byte enums,
//! strings go through the crate's string reader) into plain Rust vectors.
//! Must never: panic or allocate without bound on a damaged file (every read is checked against
//! [`MAX_READ_BYTES`] before its buffer exists), guess a datatype, or know about NWB semantics
//! (which paths are required is decided by the callers).

use std::path::{Path, PathBuf};

use hdf5_reader::error::Error as H5Error;
use hdf5_reader::{Dataset, Datatype, Hdf5File, OpenOptions, SliceInfo, SliceInfoElem, StringSize};

use crate::dataset::DatasetError;

/// Largest decoded dataset we read in one piece. The full MC_Maze file's largest dataset
/// (7.2 M behaviour samples x 2 x f64) is 115 MB; a damaged header claiming more than this is
/// refused instead of allocated.
pub(crate) const MAX_READ_BYTES: u64 = 1 << 30;

/// An open NWB (HDF5) file and its path, for error messages.
pub(crate) struct NwbFile {
    file: Hdf5File,
    path: PathBuf,
    bytes: u64,
}

/// Names of a group's members.
pub(crate) struct Members {
    /// Child datasets (links to datasets included).
    pub(crate) datasets: Vec<String>,
    /// Child groups.
    pub(crate) groups: Vec<String>,
}

/// One column's values as stored, widened to a few Rust types.
#[derive(Debug, Clone)]
pub(crate) enum Values {
    /// Floating point (f32 widened exactly to f64).
    Float(Vec<f64>),
    /// Signed or unsigned integers of any width (u64 above `i64::MAX` is refused).
    Int(Vec<i64>),
    /// Booleans, stored as a 1-byte HDF5 enum (h5py/pynwb) or as 0/1 integers.
    Bool(Vec<bool>),
    /// Strings, fixed or variable length.
    Str(Vec<String>),
}

impl Values {
    /// Number of stored scalar elements.
    pub(crate) fn len(&self) -> usize {
        match self {
            Values::Float(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Bool(v) => v.len(),
            Values::Str(v) => v.len(),
        }
    }

    /// A short name of the kind, for reports.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Values::Float(_) => "float",
            Values::Int(_) => "int",
            Values::Bool(_) => "bool",
            Values::Str(_) => "string",
        }
    }
}

impl NwbFile {
    /// Opens `path`. A file the OS cannot open is [`DatasetError::Io`]; one that is not a
    /// readable HDF5 file is [`DatasetError::Invalid`].
    pub(crate) fn open(path: &Path) -> Result<Self, DatasetError> {
        let io = |source| DatasetError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Open it ourselves first so a missing or unreadable file gets the OS's own words.
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            return Err(io(std::io::Error::other("is a directory")));
        }
        std::fs::File::open(path).map_err(io)?;
        // Every dataset is read exactly once, so a chunk cache would only hold memory.
        let options = OpenOptions::default()
            .with_chunk_cache_bytes(0)
            .with_max_read_bytes(MAX_READ_BYTES as usize);
        let file =
            Hdf5File::open_with_options(path, options).map_err(|e| DatasetError::Invalid {
                path: path.to_path_buf(),
                detail: format!("not a readable HDF5 file ({e})"),
            })?;
        let nwb = Self {
            file,
            path: path.to_path_buf(),
            bytes: meta.len(),
        };
        // libhdf5's own truncation check: the superblock records where the file ends. Without
        // it a file cut short after the parts we read would load, silently incomplete.
        let sb = nwb.file.superblock();
        let recorded_end = sb.base_address.saturating_add(sb.eof_address);
        if recorded_end > nwb.bytes {
            return Err(nwb.invalid(format!(
                "truncated: the HDF5 superblock says the file is {recorded_end} bytes, it has {}",
                nwb.bytes
            )));
        }
        // Parse the root group now so a file with a valid superblock but nothing behind it fails
        // here, with a clear message, rather than as a "missing path" later.
        nwb.file.root_group().map_err(|e| nwb.damaged("/", e))?;
        Ok(nwb)
    }

    /// Size of the file in bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// An [`DatasetError::Invalid`] about this file.
    pub(crate) fn invalid(&self, detail: impl Into<String>) -> DatasetError {
        DatasetError::Invalid {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    /// The error for a read that failed inside the HDF5 structures.
    pub(crate) fn damaged(&self, h5path: &str, err: H5Error) -> DatasetError {
        self.invalid(format!(
            "cannot read {h5path}: {err} (is the file truncated or corrupt?)"
        ))
    }

    /// The dataset at `h5path`, or `None` if that path does not exist (or is not a dataset).
    /// A lookup that fails for any other reason is an error: a damaged file must not pass for
    /// one that merely lacks an optional column.
    pub(crate) fn dataset(&self, h5path: &str) -> Result<Option<Dataset>, DatasetError> {
        match self.file.dataset(h5path) {
            Ok(ds) => Ok(Some(ds)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.damaged(h5path, e)),
        }
    }

    /// The dataset at `h5path`, which the loader cannot do without.
    pub(crate) fn require(&self, h5path: &str, why: &str) -> Result<Dataset, DatasetError> {
        self.dataset(h5path)?
            .ok_or_else(|| self.invalid(format!("required dataset {h5path} is missing ({why})")))
    }

    /// Names of the members of the group at `h5path`, or `None` if it does not exist.
    pub(crate) fn members(&self, h5path: &str) -> Result<Option<Members>, DatasetError> {
        let group = match self.file.group(h5path) {
            Ok(g) => g,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.damaged(h5path, e)),
        };
        let (groups, datasets) = group.member_names().map_err(|e| self.damaged(h5path, e))?;
        Ok(Some(Members { datasets, groups }))
    }

    /// A numeric attribute of the dataset, widened to f64.
    pub(crate) fn attr_f64(
        &self,
        ds: &Dataset,
        h5path: &str,
        name: &str,
    ) -> Result<Option<f64>, DatasetError> {
        match ds.attribute(name) {
            Ok(a) => a
                .read_as_f64()
                .map(Some)
                .map_err(|e| self.damaged(&format!("{h5path}@{name}"), e)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.damaged(&format!("{h5path}@{name}"), e)),
        }
    }

    /// Checks a dataset's size against [`MAX_READ_BYTES`] and returns its element count.
    fn checked_len(&self, ds: &Dataset, h5path: &str, elem: u64) -> Result<usize, DatasetError> {
        let n = ds.num_elements().map_err(|e| self.damaged(h5path, e))?;
        match n.checked_mul(elem) {
            Some(bytes) if bytes <= MAX_READ_BYTES => Ok(n as usize),
            _ => Err(self.invalid(format!(
                "{h5path} claims {n} elements, more than this loader reads in one piece \
                 ({} MiB); the file is corrupt or not MC_Maze-like",
                MAX_READ_BYTES >> 20
            ))),
        }
    }

    /// Reads a floating-point dataset (f64, or f32 widened exactly) of any shape, flattened in
    /// row-major order.
    pub(crate) fn read_f64(&self, ds: &Dataset, h5path: &str) -> Result<Vec<f64>, DatasetError> {
        match ds.dtype() {
            Datatype::FloatingPoint { size: 8, .. } => self.read_exact::<f64>(ds, h5path),
            Datatype::FloatingPoint { size: 4, .. } => Ok(self
                .read_exact::<f32>(ds, h5path)?
                .into_iter()
                .map(f64::from)
                .collect()),
            other => Err(self.wrong_type(h5path, "floating point", other)),
        }
    }

    /// Reads element `i` of a 1-D floating-point dataset without reading the rest (for reports
    /// on series the loader does not otherwise need).
    pub(crate) fn read_f64_at(
        &self,
        ds: &Dataset,
        h5path: &str,
        i: u64,
    ) -> Result<f64, DatasetError> {
        let sel = SliceInfo {
            selections: vec![SliceInfoElem::Index(i)],
        };
        let err = |e| self.damaged(h5path, e);
        let value = match ds.dtype() {
            Datatype::FloatingPoint { size: 8, .. } => ds
                .read_slice::<f64>(&sel)
                .map_err(err)?
                .iter()
                .next()
                .copied(),
            Datatype::FloatingPoint { size: 4, .. } => ds
                .read_slice::<f32>(&sel)
                .map_err(err)?
                .iter()
                .next()
                .map(|&v| f64::from(v)),
            other => return Err(self.wrong_type(h5path, "floating point", other)),
        };
        value.ok_or_else(|| self.invalid(format!("{h5path} has no element {i}")))
    }

    /// Reads an integer dataset of any stored width and signedness as i64.
    pub(crate) fn read_i64(&self, ds: &Dataset, h5path: &str) -> Result<Vec<i64>, DatasetError> {
        let (size, signed) = match ds.dtype() {
            Datatype::FixedPoint { size, signed, .. } => (*size, *signed),
            other => return Err(self.wrong_type(h5path, "integer", other)),
        };
        fn widen<T: Into<i64>>(v: Vec<T>) -> Vec<i64> {
            v.into_iter().map(Into::into).collect()
        }
        Ok(match (size, signed) {
            (1, false) => widen(self.read_exact::<u8>(ds, h5path)?),
            (2, false) => widen(self.read_exact::<u16>(ds, h5path)?),
            (4, false) => widen(self.read_exact::<u32>(ds, h5path)?),
            (8, false) => {
                let v = self.read_exact::<u64>(ds, h5path)?;
                let mut out = Vec::with_capacity(v.len());
                for x in v {
                    out.push(i64::try_from(x).map_err(|_| {
                        self.invalid(format!(
                            "{h5path} holds {x}, too large for a count or index"
                        ))
                    })?);
                }
                out
            }
            (1, true) => widen(self.read_exact::<i8>(ds, h5path)?),
            (2, true) => widen(self.read_exact::<i16>(ds, h5path)?),
            (4, true) => widen(self.read_exact::<i32>(ds, h5path)?),
            (8, true) => self.read_exact::<i64>(ds, h5path)?,
            _ => return Err(self.wrong_type(h5path, "integer of 1, 2, 4 or 8 bytes", ds.dtype())),
        })
    }

    /// Reads a ragged-array index (`X_index`): non-decreasing end offsets into `X`, each at
    /// most `data_rows`.
    pub(crate) fn read_index(
        &self,
        ds: &Dataset,
        h5path: &str,
        data_rows: usize,
    ) -> Result<Vec<usize>, DatasetError> {
        let raw = self.read_i64(ds, h5path)?;
        let mut prev = 0usize;
        let mut out = Vec::with_capacity(raw.len());
        for (i, &end) in raw.iter().enumerate() {
            let end = usize::try_from(end)
                .ok()
                .filter(|&e| e >= prev && e <= data_rows);
            let Some(end) = end else {
                return Err(self.invalid(format!(
                    "{h5path}[{i}] = {} is not a valid end offset (previous {prev}, data has \
                     {data_rows} rows)",
                    raw[i]
                )));
            };
            out.push(end);
            prev = end;
        }
        Ok(out)
    }

    /// Reads any column we know how to serve: floats, integers, booleans (1-byte enums or
    /// integers, by member name), strings. Anything else is `Ok(None)`, for the caller to skip
    /// with a warning.
    pub(crate) fn read_values(
        &self,
        ds: &Dataset,
        h5path: &str,
    ) -> Result<Option<Values>, DatasetError> {
        Ok(Some(match ds.dtype() {
            Datatype::FloatingPoint { .. } => Values::Float(self.read_f64(ds, h5path)?),
            Datatype::FixedPoint { .. } => Values::Int(self.read_i64(ds, h5path)?),
            Datatype::Enum { .. } => match self.read_bool(ds, h5path)? {
                Some(b) => Values::Bool(b),
                None => return Ok(None),
            },
            Datatype::String { .. } => Values::Str(self.read_strings(ds, h5path)?),
            Datatype::VarLen { base, .. } if base.is_vlen_string_base() => {
                Values::Str(self.read_strings(ds, h5path)?)
            }
            _ => return Ok(None),
        }))
    }

    /// Reads a boolean column stored as an HDF5 enum of one byte with members `FALSE`/`TRUE`
    /// (what h5py writes for numpy bool). `Ok(None)` for any other enum.
    pub(crate) fn read_bool(
        &self,
        ds: &Dataset,
        h5path: &str,
    ) -> Result<Option<Vec<bool>>, DatasetError> {
        let Datatype::Enum { base, members } = ds.dtype() else {
            return Err(self.wrong_type(h5path, "boolean enum", ds.dtype()));
        };
        if !matches!(**base, Datatype::FixedPoint { size: 1, .. }) {
            return Ok(None);
        }
        let value_of = |name: &str| {
            members
                .iter()
                .find(|m| m.name.eq_ignore_ascii_case(name))
                .and_then(|m| m.value.first().copied())
        };
        let (Some(f), Some(t)) = (value_of("FALSE"), value_of("TRUE")) else {
            return Ok(None);
        };
        let n = self.checked_len(ds, h5path, 1)?;
        let mut raw = vec![0u8; n];
        // The enum's members are 1-byte values, so the raw bytes are the values themselves.
        ds.read_raw_bytes_into(&mut raw)
            .map_err(|e| self.damaged(h5path, e))?;
        let mut out = Vec::with_capacity(n);
        for (i, b) in raw.into_iter().enumerate() {
            out.push(match b {
                b if b == t => true,
                b if b == f => false,
                b => {
                    return Err(self.invalid(format!(
                        "{h5path}[{i}] = {b} is neither FALSE ({f}) nor TRUE ({t})"
                    )))
                }
            });
        }
        Ok(Some(out))
    }

    /// Reads a string column, fixed or variable length.
    pub(crate) fn read_strings(
        &self,
        ds: &Dataset,
        h5path: &str,
    ) -> Result<Vec<String>, DatasetError> {
        // Variable-length strings live in the global heap; bound the count, not the bytes.
        let elem = match ds.dtype() {
            Datatype::String {
                size: StringSize::Fixed(n),
                ..
            } => u64::from(*n).max(1),
            _ => 16,
        };
        self.checked_len(ds, h5path, elem)?;
        ds.read_strings().map_err(|e| self.damaged(h5path, e))
    }

    /// Reads a dataset whose stored type is exactly `T` into a vector, row-major.
    fn read_exact<T: hdf5_reader::H5Type + Default>(
        &self,
        ds: &Dataset,
        h5path: &str,
    ) -> Result<Vec<T>, DatasetError> {
        let n = self.checked_len(ds, h5path, std::mem::size_of::<T>() as u64)?;
        if ds.chunks().is_some() {
            // Chunked (gzip) data decodes chunk by chunk on the rayon pool; that is most of the
            // load time of a large file, and the machine's other core would otherwise idle.
            let array = ds
                .read_array_parallel::<T>()
                .map_err(|e| self.damaged(h5path, e))?;
            if array.len() != n {
                return Err(self.invalid(format!("{h5path}: read {} of {n} elements", array.len())));
            }
            return Ok(if array.is_standard_layout() {
                array.into_raw_vec_and_offset().0
            } else {
                array.iter().cloned().collect()
            });
        }
        let mut out = vec![T::default(); n];
        ds.read_into(&mut out)
            .map_err(|e| self.damaged(h5path, e))?;
        Ok(out)
    }

    fn wrong_type(&self, h5path: &str, wanted: &str, got: &Datatype) -> DatasetError {
        self.invalid(format!(
            "{h5path} should hold {wanted} values, but its datatype is {got:?}"
        ))
    }
}

/// Whether an `hdf5-reader` error means "no such object" rather than "damaged file".
fn is_not_found(err: &H5Error) -> bool {
    match err {
        H5Error::GroupNotFound(_) | H5Error::DatasetNotFound(_) | H5Error::AttributeNotFound(_) => {
            true
        }
        H5Error::Context { source, .. } => is_not_found(source),
        _ => false,
    }
}
