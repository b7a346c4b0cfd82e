//! An RGB image that embedded-graphics can draw on, saved as PNG: used for plots, and the same
//! `DrawTarget` edge every display back end implements.

use std::path::Path;

use anyhow::{Context, Result};
use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::*;

pub struct RgbCanvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl RgbCanvas {
    pub fn new(width: u32, height: u32, background: Rgb888) -> Self {
        let mut pixels = Vec::with_capacity((width * height * 3) as usize);
        for _ in 0..width * height {
            pixels.extend_from_slice(&[background.r(), background.g(), background.b()]);
        }
        RgbCanvas {
            width,
            height,
            pixels,
        }
    }

    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    pub fn save_png(&self, path: &Path) -> Result<()> {
        image::save_buffer(
            path,
            &self.pixels,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
        )
        .with_context(|| format!("{}: cannot write PNG", path.display()))
    }
}

impl OriginDimensions for RgbCanvas {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for RgbCanvas {
    type Color = Rgb888;
    type Error = core::convert::Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.width && (p.y as u32) < self.height {
                let i = ((p.y as u32 * self.width + p.x as u32) * 3) as usize;
                self.pixels[i..i + 3].copy_from_slice(&[c.r(), c.g(), c.b()]);
            }
        }
        Ok(())
    }
}
