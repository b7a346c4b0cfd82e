//! The planarity cue: a photo or a screen is flat, so across frames with head motion its face
//! landmarks follow one homography (a plane seen from another angle); a real head's do not (the
//! nose moves against the cheeks). The cue is the landmarks' homography residual against a
//! reference frame, in units of the eye distance, taken only on frames where the face moved
//! beyond what a similarity (shift, scale, roll) explains, so a still head says nothing.
//!
//! The homography is the normalised direct linear transform (Hartley): both point sets moved to
//! their centroid and scaled to a mean distance of sqrt(2) before the 9x9 least-squares problem,
//! which is what makes it well conditioned in pixel coordinates.

/// A 3x3 matrix, row-major.
pub type Mat3 = [[f64; 3]; 3];

/// The FaceMesh points used: eye corners, brows, nose bridge and tip, mouth corners and lips,
/// cheeks and chin — features on and off the face's mean plane, none on the outline, which
/// the mesh guesses when it turns away.
pub const POINTS: [usize; 20] = [
    33, 133, 362, 263, // eye corners
    70, 105, 334, 300, // brows
    168, 6, 1, 4, // nose bridge and tip
    61, 291, 0, 17, // mouth corners, upper and lower lip
    205, 425, // cheeks
    152, 199, // chin
];

/// Centroid to the origin, mean distance sqrt(2).
fn normaliser(points: &[[f64; 2]]) -> Mat3 {
    let n = points.len().max(1) as f64;
    let cx = points.iter().map(|p| p[0]).sum::<f64>() / n;
    let cy = points.iter().map(|p| p[1]).sum::<f64>() / n;
    let mean = points
        .iter()
        .map(|p| ((p[0] - cx).powi(2) + (p[1] - cy).powi(2)).sqrt())
        .sum::<f64>()
        / n;
    let s = if mean > 0.0 {
        std::f64::consts::SQRT_2 / mean
    } else {
        1.0
    };
    [[s, 0.0, -s * cx], [0.0, s, -s * cy], [0.0, 0.0, 1.0]]
}

fn apply(h: &Mat3, p: [f64; 2]) -> [f64; 2] {
    let w = h[2][0] * p[0] + h[2][1] * p[1] + h[2][2];
    [
        (h[0][0] * p[0] + h[0][1] * p[1] + h[0][2]) / w,
        (h[1][0] * p[0] + h[1][1] * p[1] + h[1][2]) / w,
    ]
}

fn mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// The inverse of a normaliser (scale and shift only).
fn unnormaliser(t: &Mat3) -> Mat3 {
    let s = t[0][0];
    [
        [1.0 / s, 0.0, -t[0][2] / s],
        [0.0, 1.0 / s, -t[1][2] / s],
        [0.0, 0.0, 1.0],
    ]
}

/// The eigenvector of the smallest eigenvalue of a symmetric matrix (cyclic Jacobi rotations).
fn smallest_eigenvector<const N: usize>(mut a: [[f64; N]; N]) -> [f64; N] {
    let mut v = [[0.0; N]; N];
    for (i, row) in v.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..N)
            .flat_map(|i| (0..N).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off < 1e-22 {
            break;
        }
        for p in 0..N {
            for q in p + 1..N {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Numerical Recipes' `jacobi`).
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = if theta == 0.0 {
                    1.0
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (row_p, row_q) = (a[p], a[q]);
                for (k, (apk, aqk)) in row_p.into_iter().zip(row_q).enumerate() {
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for row in v.iter_mut() {
                    let (vkp, vkq) = (row[p], row[q]);
                    row[p] = c * vkp - s * vkq;
                    row[q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let min = (0..N)
        .min_by(|&i, &j| a[i][i].total_cmp(&a[j][j]))
        .unwrap_or(0);
    std::array::from_fn(|k| v[k][min])
}

/// The least-squares homography taking `from` to `to` (normalised DLT); None for fewer than
/// four points or a degenerate set.
pub fn homography(from: &[[f64; 2]], to: &[[f64; 2]]) -> Option<Mat3> {
    if from.len() < 4 || from.len() != to.len() {
        return None;
    }
    let (tf, tt) = (normaliser(from), normaliser(to));
    let mut ata = [[0.0; 9]; 9];
    for (p, q) in from.iter().zip(to) {
        let [x, y] = apply(&tf, *p);
        let [u, v] = apply(&tt, *q);
        for row in [
            [-x, -y, -1.0, 0.0, 0.0, 0.0, u * x, u * y, u],
            [0.0, 0.0, 0.0, -x, -y, -1.0, v * x, v * y, v],
        ] {
            for i in 0..9 {
                for j in 0..9 {
                    ata[i][j] += row[i] * row[j];
                }
            }
        }
    }
    let h = smallest_eigenvector(ata);
    let hn = [[h[0], h[1], h[2]], [h[3], h[4], h[5]], [h[6], h[7], h[8]]];
    let out = mul(&unnormaliser(&tt), &mul(&hn, &tf));
    (out[2][2].abs() > 1e-12 && out.iter().flatten().all(|v| v.is_finite())).then_some(out)
}

/// Root mean square distance between `to` and `from` mapped by `h`.
pub fn transfer_rms(h: &Mat3, from: &[[f64; 2]], to: &[[f64; 2]]) -> f64 {
    let n = from.len().max(1) as f64;
    (from
        .iter()
        .zip(to)
        .map(|(p, q)| {
            let m = apply(h, *p);
            (m[0] - q[0]).powi(2) + (m[1] - q[1]).powi(2)
        })
        .sum::<f64>()
        / n)
        .sqrt()
}

/// The least-squares similarity (shift, scale, roll) taking `from` to `to`, as a matrix; for
/// coincident points (no scale or roll to fit), the shift of their centres.
pub fn similarity(from: &[[f64; 2]], to: &[[f64; 2]]) -> Mat3 {
    match crate::face::Similarity::estimate(from, to) {
        Ok(s) => {
            let [r0, r1] = s.matrix();
            [r0, r1, [0.0, 0.0, 1.0]]
        }
        Err(_) => {
            let n = from.len().max(1) as f64;
            let mean = |ps: &[[f64; 2]], k: usize| ps.iter().map(|p| p[k]).sum::<f64>() / n;
            let (dx, dy) = (mean(to, 0) - mean(from, 0), mean(to, 1) - mean(from, 1));
            [[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]]
        }
    }
}

/// One frame against the reference: how far the landmarks moved beyond a similarity, and how
/// far they are from one homography, both in eye distances.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanarityStep {
    pub motion: f64,
    pub residual: f64,
}

/// The chosen landmarks of one FaceMesh result, in pixels, and the eye distance.
pub fn chosen_points(mesh: &[[f32; 3]]) -> Option<(Vec<[f64; 2]>, f64)> {
    let pts: Vec<[f64; 2]> = POINTS
        .iter()
        .map(|&i| mesh.get(i).map(|p| [p[0] as f64, p[1] as f64]))
        .collect::<Option<_>>()?;
    let eye = |a: usize, b: usize| {
        let (p, q) = (mesh[a], mesh[b]);
        [(p[0] + q[0]) as f64 / 2.0, (p[1] + q[1]) as f64 / 2.0]
    };
    let (l, r) = (eye(33, 133), eye(362, 263));
    let iod = ((l[0] - r[0]).powi(2) + (l[1] - r[1]).powi(2)).sqrt();
    (iod > 1.0).then_some((pts, iod))
}

/// A frame's landmarks against the reference frame's.
pub fn step(reference: &[[f32; 3]], current: &[[f32; 3]]) -> Option<PlanarityStep> {
    let (from, _) = chosen_points(reference)?;
    let (to, iod) = chosen_points(current)?;
    let motion = transfer_rms(&similarity(&from, &to), &from, &to) / iod;
    let residual = transfer_rms(&homography(&from, &to)?, &from, &to) / iod;
    Some(PlanarityStep { motion, residual })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Vec<[f64; 2]> {
        (0..20)
            .map(|i| [100.0 + (i % 5) as f64 * 30.0, 80.0 + (i / 5) as f64 * 40.0])
            .collect()
    }

    #[test]
    fn a_plane_seen_from_another_angle_fits_one_homography() {
        let h: Mat3 = [
            [0.9, 0.12, 15.0],
            [-0.08, 1.05, -7.0],
            [0.0009, -0.0004, 1.0],
        ];
        let from = grid();
        let to: Vec<[f64; 2]> = from.iter().map(|p| apply(&h, *p)).collect();
        let fit = homography(&from, &to).unwrap();
        assert!(transfer_rms(&fit, &from, &to) < 1e-6);
        // A similarity cannot explain the perspective part.
        assert!(transfer_rms(&similarity(&from, &to), &from, &to) > 1.0);
    }

    #[test]
    fn points_off_the_plane_turning_do_not() {
        // A head-like shape: depth at the centre (nose), rotated 20 degrees about the vertical.
        let pts: Vec<[f64; 3]> = grid()
            .iter()
            .map(|p| {
                let (x, y) = (p[0] - 160.0, p[1] - 140.0);
                [x, y, 60.0 * (-(x * x + y * y) / 5000.0).exp()]
            })
            .collect();
        let project = |yaw: f64| -> Vec<[f64; 2]> {
            let (c, s) = (yaw.to_radians().cos(), yaw.to_radians().sin());
            pts.iter()
                .map(|p| {
                    let (x, z) = (c * p[0] + s * p[2], -s * p[0] + c * p[2]);
                    let f = 800.0 / (800.0 - z);
                    [320.0 + f * x, 240.0 + f * p[1]]
                })
                .collect()
        };
        let (from, to) = (project(0.0), project(20.0));
        let residual = transfer_rms(&homography(&from, &to).unwrap(), &from, &to);
        assert!(residual > 2.0, "residual {residual} px");
    }

    #[test]
    fn a_similarity_is_recovered() {
        let from = grid();
        let (a, b) = (1.2 * 0.3f64.cos(), 1.2 * 0.3f64.sin());
        let to: Vec<[f64; 2]> = from
            .iter()
            .map(|p| [a * p[0] - b * p[1] + 5.0, b * p[0] + a * p[1] - 3.0])
            .collect();
        assert!(transfer_rms(&similarity(&from, &to), &from, &to) < 1e-9);
    }
}
