//! The similarity transform (rotation, uniform scale, translation) fitted to point pairs: face
//! alignment for identity and the head-motion baseline of the planarity check share it.

use anyhow::{bail, Result};

/// A similarity transform (rotation, uniform scale, translation):
/// `[x', y'] = [[a, -b], [b, a]] [x, y] + [tx, ty]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Similarity {
    pub a: f64,
    pub b: f64,
    pub tx: f64,
    pub ty: f64,
}

impl Similarity {
    /// The least-squares similarity taking `src` onto `dst` (Umeyama's solution, which for a
    /// proper similarity reduces to this closed form on centred points).
    pub fn estimate(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Result<Similarity> {
        if src.len() != dst.len() || src.len() < 2 {
            bail!("a similarity needs two or more point pairs");
        }
        let n = src.len() as f64;
        let centre = |pts: &[[f64; 2]]| {
            let (sx, sy) = pts
                .iter()
                .fold((0.0, 0.0), |(x, y), p| (x + p[0], y + p[1]));
            [sx / n, sy / n]
        };
        let (cs, cd) = (centre(src), centre(dst));
        let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
        for (s, d) in src.iter().zip(dst) {
            let (x, y) = (s[0] - cs[0], s[1] - cs[1]);
            let (u, v) = (d[0] - cd[0], d[1] - cd[1]);
            dot += x * u + y * v;
            cross += x * v - y * u;
            norm += x * x + y * y;
        }
        if norm < 1e-9 {
            bail!("the face points coincide: no alignment");
        }
        let (a, b) = (dot / norm, cross / norm);
        Ok(Similarity {
            a,
            b,
            tx: cd[0] - (a * cs[0] - b * cs[1]),
            ty: cd[1] - (b * cs[0] + a * cs[1]),
        })
    }

    pub fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        [
            self.a * x - self.b * y + self.tx,
            self.b * x + self.a * y + self.ty,
        ]
    }

    pub fn inverse(&self) -> Similarity {
        let d = self.a * self.a + self.b * self.b;
        let (a, b) = (self.a / d, -self.b / d);
        Similarity {
            a,
            b,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        }
    }

    /// The 2x3 matrix, as OpenCV and scikit-image write it.
    pub fn matrix(&self) -> [[f64; 3]; 2] {
        [[self.a, -self.b, self.tx], [self.b, self.a, self.ty]]
    }
}
