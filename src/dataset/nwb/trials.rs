//! The trial table (`/intervals/trials`): every column, ragged ones included, as [`Trial`]s.
//!
//! Owns: reading the NWB `TimeIntervals` table generically (any column of floats, integers,
//! booleans or strings, fixed-width rows like `(N, k)` and ragged rows through `X_index`),
//! deriving `target_id = active_target` and `target_x/y = target_pos[active_target]`, and
//! moving absolute times onto the recording's clock (seconds since t0).
//! Must never: require an optional column (only `start_time` and `stop_time` are needed), or
//! drop a column silently — one it cannot serve becomes a warning.

use serde_json::{Map, Number, Value};

use super::reader::{NwbFile, Values};
use crate::dataset::{DatasetError, Trial};

/// Where the trial table lives.
pub(crate) const TRIALS: &str = "/intervals/trials";

/// The trial table as loaded.
pub(crate) struct TrialTable {
    /// One per row; `id` is the row index.
    pub(crate) trials: Vec<Trial>,
    /// Columns found, with their kind (`float`, `int[2] ragged`, ...), in file order.
    pub(crate) columns: Vec<(String, String)>,
    /// Latest `stop_time` in file seconds, if any trial has one.
    pub(crate) last_stop: Option<f64>,
}

/// One column as rows of JSON values.
struct Column {
    name: String,
    kind: String,
    rows: Vec<Value>,
}

/// Reads the trial table, or `None` if the file has none. Times are shifted by `t0_seconds`:
/// `start_time`, `stop_time` and every float column whose name ends in `_time` (absolute
/// times such as `go_cue_time`), so the trials API and `trial_time_ms` share one clock.
pub(crate) fn read(
    file: &NwbFile,
    t0_seconds: f64,
    warnings: &mut Vec<String>,
) -> Result<Option<TrialTable>, DatasetError> {
    let Some(members) = file.members(TRIALS)? else {
        return Ok(None);
    };
    let path = |name: &str| format!("{TRIALS}/{name}");
    let start = file.require(&path("start_time"), "every trial needs a start")?;
    let start = file.read_f64(&start, &path("start_time"))?;
    let rows = start.len();

    let mut columns = Vec::new();
    for name in &members.datasets {
        if name == "id" || name.ends_with("_index") {
            continue;
        }
        let h5path = path(name);
        let Some(ds) = file.dataset(&h5path)? else {
            continue;
        };
        let Some(values) = file.read_values(&ds, &h5path)? else {
            warnings.push(format!("{h5path}: datatype {:?} is not served", ds.dtype()));
            continue;
        };
        // Elements per stored row: 1 for (N,), k for (N, k), k*m for (N, k, m).
        let shape: Vec<usize> = ds.shape().iter().map(|&d| d as usize).collect();
        let width: usize = shape.iter().skip(1).product();
        let stored_rows = shape.first().copied().unwrap_or(values.len().min(1));
        let base_kind = values.kind();
        let shift = name.ends_with("_time") && matches!(values, Values::Float(_));
        let mut elements = element_values(values, if shift { t0_seconds } else { 0.0 });
        if elements.len() != stored_rows * width {
            return Err(file.invalid(format!(
                "{h5path}: shape {shape:?} but {} values",
                elements.len()
            )));
        }
        let row_of = |chunk: &mut dyn Iterator<Item = Value>| -> Value {
            if width == 1 && shape.len() == 1 {
                chunk.next().unwrap_or(Value::Null)
            } else {
                Value::Array(chunk.collect())
            }
        };
        let mut kind = base_kind.to_string();
        if shape.len() > 1 {
            kind = format!("{kind}{:?}", &shape[1..]);
        }
        let index_path = format!("{h5path}_index");
        let column_rows: Vec<Value> = match file.dataset(&index_path)? {
            Some(index) => {
                let ends = file.read_index(&index, &index_path, stored_rows)?;
                kind.push_str(" ragged");
                let mut it = elements.drain(..);
                let mut begin = 0;
                ends.iter()
                    .map(|&end| {
                        let row: Vec<Value> = (begin..end)
                            .map(|_| row_of(&mut it.by_ref().take(width)))
                            .collect();
                        begin = end;
                        Value::Array(row)
                    })
                    .collect()
            }
            None => {
                let mut it = elements.into_iter();
                (0..stored_rows)
                    .map(|_| row_of(&mut it.by_ref().take(width)))
                    .collect()
            }
        };
        if column_rows.len() != rows {
            warnings.push(format!(
                "{h5path} has {} rows, start_time has {rows}; column not served",
                column_rows.len()
            ));
            continue;
        }
        columns.push(Column {
            name: name.clone(),
            kind,
            rows: column_rows,
        });
    }

    let stop = columns
        .iter()
        .position(|c| c.name == "stop_time" && c.kind == "float")
        .ok_or_else(|| {
            file.invalid(format!(
                "required dataset {} is missing or not float",
                path("stop_time")
            ))
        })?;
    let last_stop = columns[stop]
        .rows
        .iter()
        .filter_map(Value::as_f64)
        .map(|t| t + t0_seconds)
        .reduce(f64::max);

    let mut trials = Vec::with_capacity(rows);
    let mut bad_target = 0usize;
    for i in 0..rows {
        let mut extra = Map::new();
        for c in &columns {
            extra.insert(c.name.clone(), c.rows[i].clone());
        }
        let time = |v: Option<Value>| v.and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let start_time = time(extra.remove("start_time"));
        let stop_time = time(extra.remove("stop_time"));
        let success = extra
            .remove("success")
            .and_then(|v| v.as_bool().or(v.as_i64().map(|n| n != 0)));
        let target_id = extra
            .get("active_target")
            .and_then(Value::as_u64)
            .and_then(|t| u32::try_from(t).ok());
        let (target_x, target_y) = match target_position(extra.get("target_pos"), target_id) {
            Some(p) => (Some(p.0), Some(p.1)),
            None => {
                if target_id.is_some() && extra.contains_key("target_pos") {
                    bad_target += 1;
                }
                (None, None)
            }
        };
        trials.push(Trial {
            id: i as u32,
            start_time,
            stop_time,
            target_id,
            target_x,
            target_y,
            success,
            extra,
        });
    }
    if bad_target > 0 {
        warnings.push(format!(
            "{bad_target} trial(s) have an active_target outside their target_pos rows; \
             their target position is null"
        ));
    }
    Ok(Some(TrialTable {
        trials,
        columns: columns.into_iter().map(|c| (c.name, c.kind)).collect(),
        last_stop,
    }))
}

/// `target_pos[active_target]` of one trial: a ragged row of `[x, y]` pairs indexed by the
/// active target, or a single `[x, y]` row when targets are not ragged.
fn target_position(target_pos: Option<&Value>, active: Option<u32>) -> Option<(f64, f64)> {
    let row = target_pos?.as_array()?;
    let pair = match row.first() {
        Some(Value::Array(_)) => row.get(active? as usize)?.as_array()?,
        Some(_) => row,
        None => return None,
    };
    Some((pair.first()?.as_f64()?, pair.get(1)?.as_f64()?))
}

/// Flat JSON values of a column, floats shifted by `-shift` (NaN becomes `null`).
fn element_values(values: Values, shift: f64) -> Vec<Value> {
    match values {
        Values::Float(v) => v
            .into_iter()
            .map(|x| Number::from_f64(x - shift).map_or(Value::Null, Value::Number))
            .collect(),
        Values::Int(v) => v.into_iter().map(Value::from).collect(),
        Values::Bool(v) => v.into_iter().map(Value::Bool).collect(),
        Values::Str(v) => v.into_iter().map(Value::String).collect(),
    }
}
