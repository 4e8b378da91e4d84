//! A reference decoder: ridge regression from lagged spike counts to hand velocity.
//!
//! Not part of the server. It is what the example closed-loop client
//! (`phantomlink-decoder`) trains and answers with, and what the tests use to show that the
//! synthetic dataset carries decodable signal; a baseline for users to beat.

/// Spike counts of the last few bins, newest first.
#[derive(Debug, Clone)]
pub struct SpikeHistory {
    units: usize,
    depth: usize,
    bins: std::collections::VecDeque<Vec<u16>>,
}

impl SpikeHistory {
    /// Holds `depth` bins of `units` counts.
    pub fn new(units: usize, depth: usize) -> Self {
        Self {
            units,
            depth: depth.max(1),
            bins: std::collections::VecDeque::with_capacity(depth.max(1)),
        }
    }

    /// Adds the newest bin (shorter or longer rows are cut or padded to `units`).
    pub fn push(&mut self, counts: &[u16]) {
        let mut row = if self.bins.len() == self.depth {
            self.bins.pop_back().unwrap_or_default()
        } else {
            Vec::with_capacity(self.units)
        };
        row.clear();
        row.extend(counts.iter().copied().take(self.units));
        row.resize(self.units, 0);
        self.bins.push_front(row);
    }

    /// Whether `depth` bins have been seen.
    pub fn is_full(&self) -> bool {
        self.bins.len() == self.depth
    }

    /// Bias then counts, lag by lag, as sparse `(index, value)` pairs in ascending index.
    fn features(&self, out: &mut Vec<(usize, f64)>) {
        out.clear();
        out.push((0, 1.0));
        for (lag, row) in self.bins.iter().enumerate() {
            for (unit, &count) in row.iter().enumerate() {
                if count > 0 {
                    out.push((1 + lag * self.units + unit, f64::from(count)));
                }
            }
        }
    }
}

/// Accumulates the normal equations of a ridge regression with two outputs (vx, vy).
#[derive(Debug, Clone)]
pub struct RidgeTrainer {
    dims: usize,
    units: usize,
    depth: usize,
    ridge: f64,
    gram: Vec<f64>,
    cross: [Vec<f64>; 2],
    samples: usize,
    scratch: Vec<(usize, f64)>,
}

/// A trained decoder.
#[derive(Debug, Clone)]
pub struct RidgeDecoder {
    weights: [Vec<f64>; 2],
    scratch: Vec<(usize, f64)>,
}

impl RidgeTrainer {
    /// A trainer for `units` units with `depth` bins of history and penalty `ridge` (the bias
    /// is not penalised).
    pub fn new(units: usize, depth: usize, ridge: f64) -> Self {
        let dims = 1 + units * depth;
        Self {
            dims,
            units,
            depth,
            ridge,
            gram: vec![0.0; dims * dims],
            cross: [vec![0.0; dims], vec![0.0; dims]],
            samples: 0,
            scratch: Vec::with_capacity(dims),
        }
    }

    /// A history buffer shaped for this trainer.
    pub fn history(&self) -> SpikeHistory {
        SpikeHistory::new(self.units, self.depth)
    }

    /// Adds one sample: the history ending at a bin, and the velocity at that bin.
    pub fn add(&mut self, history: &SpikeHistory, velocity: [f64; 2]) {
        history.features(&mut self.scratch);
        let dims = self.dims;
        for (a, &(i, xi)) in self.scratch.iter().enumerate() {
            for &(j, xj) in &self.scratch[a..] {
                self.gram[j * dims + i] += xi * xj;
            }
            self.cross[0][i] += xi * velocity[0];
            self.cross[1][i] += xi * velocity[1];
        }
        self.samples += 1;
    }

    /// Samples added so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Solves for the weights.
    pub fn finish(mut self) -> Result<RidgeDecoder, String> {
        if self.samples == 0 {
            return Err("no training samples".into());
        }
        let n = self.dims;
        for i in 1..n {
            self.gram[i * n + i] += self.ridge;
        }
        cholesky(&mut self.gram, n)?;
        let mut weights = self.cross;
        for w in &mut weights {
            cholesky_solve(&self.gram, n, w);
        }
        Ok(RidgeDecoder {
            weights,
            scratch: Vec::with_capacity(n),
        })
    }
}

impl RidgeDecoder {
    /// Decoded (vx, vy) for the history ending at the current bin.
    pub fn predict(&mut self, history: &SpikeHistory) -> [f64; 2] {
        history.features(&mut self.scratch);
        let mut out = [0.0; 2];
        for (o, w) in out.iter_mut().zip(&self.weights) {
            *o = self.scratch.iter().map(|&(i, x)| w[i] * x).sum();
        }
        out
    }
}

/// Cholesky factorisation in place (row-major; lower triangle read and written).
fn cholesky(a: &mut [f64], n: usize) -> Result<(), String> {
    for j in 0..n {
        let diag = a[j * n + j] - a[j * n..][..j].iter().map(|v| v * v).sum::<f64>();
        if diag <= 0.0 || !diag.is_finite() {
            return Err(format!("normal equations not positive definite at {j}"));
        }
        let pivot = diag.sqrt();
        a[j * n + j] = pivot;
        for i in j + 1..n {
            let (upper, lower) = a.split_at_mut(i * n);
            let row_j = &upper[j * n..][..j];
            let row_i = &mut lower[..n];
            let dot: f64 = row_i[..j].iter().zip(row_j).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - dot) / pivot;
        }
    }
    Ok(())
}

/// Solves `L Lᵀ w = b` in place, given the factor from [`cholesky`].
fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let dot: f64 = l[i * n..][..i]
            .iter()
            .zip(&b[..i])
            .map(|(x, y)| x * y)
            .sum();
        b[i] = (b[i] - dot) / l[i * n + i];
    }
    for i in (0..n).rev() {
        let dot: f64 = (i + 1..n).map(|k| l[k * n + i] * b[k]).sum();
        b[i] = (b[i] - dot) / l[i * n + i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_linear_map() {
        // vx = 2·c0 − c1 + 1, vy = c2 (one bin of history).
        let mut trainer = RidgeTrainer::new(3, 1, 1e-6);
        let mut history = trainer.history();
        let mut state = 1u32;
        for _ in 0..500 {
            let mut next = || {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((state >> 16) % 7) as u16
            };
            let counts = [next(), next(), next()];
            history.push(&counts);
            let (c0, c1, c2) = (
                f64::from(counts[0]),
                f64::from(counts[1]),
                f64::from(counts[2]),
            );
            trainer.add(&history, [2.0 * c0 - c1 + 1.0, c2]);
        }
        let mut decoder = trainer.finish().unwrap();
        history.push(&[3, 1, 4]);
        let [vx, vy] = decoder.predict(&history);
        assert!(
            (vx - 6.0).abs() < 1e-3 && (vy - 4.0).abs() < 1e-3,
            "{vx} {vy}"
        );
    }

    #[test]
    fn no_samples_is_an_error() {
        assert!(RidgeTrainer::new(2, 1, 1.0).finish().is_err());
    }
}
