//! Motion JPEG decoded in-process: AVI files whose video stream is MJPEG (what webcams, dash
//! cams and many cameras record, and what the bundled sample clip is) and bare concatenated JPEG
//! streams (`.mjpeg`, what an MJPEG webcam sends).
//!
//! Why in-process: the bundled default (`analyze samples/`) must work on a machine without the
//! ffmpeg program. MJPEG needs only a RIFF walk and the JPEG decoder the image crate already
//! brings, so the cost is this file and no new dependency. Every other codec goes to ffmpeg.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{FrameSource, TimedFrame, VideoInfo};
use crate::frame::Frame;

/// ffmpeg's rate for a bare MJPEG stream, which carries none.
const BARE_STREAM_FPS: f64 = 25.0;

/// Lists whose children are walked; any other list or chunk is skipped whole.
const DESCEND: [&[u8; 4]; 6] = [b"AVI ", b"AVIX", b"hdrl", b"strl", b"movi", b"rec "];

/// Whether this file is one the in-process decoder reads: an AVI whose first video stream is
/// MJPEG, or a stream that starts with a JPEG.
pub fn decodes(path: &Path) -> bool {
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let mut head = [0u8; 12];
    if file.read_exact(&mut head).is_err() {
        return false;
    }
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return true;
    }
    &head[0..4] == b"RIFF"
        && &head[8..12] == b"AVI "
        && AviHeader::read(path).is_ok_and(|h| h.is_mjpeg)
}

/// Stream facts of a file this module decodes.
pub fn info(path: &Path) -> Result<VideoInfo> {
    Ok(MjpegSource::open(path)?.info)
}

/// What the AVI header says about the first video stream.
struct AviHeader {
    info: VideoInfo,
    is_mjpeg: bool,
    /// Data chunks of the video stream are `NNdc` / `NNdb`, NN its two-digit index.
    stream_tag: [u8; 2],
}

impl AviHeader {
    fn read(path: &Path) -> Result<AviHeader> {
        let mut reader = BufReader::new(File::open(path)?);
        let mut walker = RiffWalker::start(&mut reader)?;
        let mut header = AviHeader {
            info: VideoInfo {
                width: 0,
                height: 0,
                fps: 0.0,
                frames: None,
            },
            is_mjpeg: false,
            stream_tag: *b"00",
        };
        let mut stream_index = 0usize;
        let mut in_video_stream = false;
        let mut found_video = false;
        while let Some((id, size)) = walker.next_chunk(&mut reader)? {
            match &id {
                b"strh" => {
                    let strh = walker.read_body(&mut reader, size)?;
                    let kind = strh.get(0..4).unwrap_or_default();
                    in_video_stream = kind == b"vids" && !found_video;
                    if in_video_stream {
                        found_video = true;
                        let handler = strh.get(4..8).unwrap_or_default();
                        header.is_mjpeg = is_mjpeg_fourcc(handler);
                        let word = |at: usize| {
                            strh.get(at..at + 4)
                                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                                .unwrap_or(0)
                        };
                        let (scale, rate, length) = (word(20), word(24), word(32));
                        if scale > 0 && rate > 0 {
                            header.info.fps = rate as f64 / scale as f64;
                        }
                        header.info.frames = (length > 0).then_some(length as u64);
                        header.stream_tag = two_digits(stream_index);
                    }
                    stream_index += 1;
                }
                b"strf" if in_video_stream => {
                    // BITMAPINFOHEADER: width, height (negative means top-down), compression.
                    let strf = walker.read_body(&mut reader, size)?;
                    if strf.len() >= 20 {
                        let int = |at: usize| {
                            i32::from_le_bytes(strf[at..at + 4].try_into().expect("4 bytes"))
                        };
                        header.info.width = int(4).unsigned_abs() as usize;
                        header.info.height = int(8).unsigned_abs() as usize;
                        header.is_mjpeg |= is_mjpeg_fourcc(&strf[16..20]);
                    }
                    in_video_stream = false;
                }
                b"movi" => break,
                _ => walker.skip(&mut reader, size)?,
            }
        }
        if !found_video {
            bail!("no video stream in the AVI header");
        }
        if header.info.fps <= 0.0 || !header.info.fps.is_finite() {
            header.info.fps = BARE_STREAM_FPS;
        }
        Ok(header)
    }
}

fn is_mjpeg_fourcc(code: &[u8]) -> bool {
    let upper = code.to_ascii_uppercase();
    matches!(
        upper.as_slice(),
        b"MJPG" | b"AVRN" | b"LJPG" | b"JPGL" | b"DMB1"
    )
}

fn two_digits(n: usize) -> [u8; 2] {
    [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]
}

/// A flat walk over RIFF chunks that steps into the lists that hold the header and the frames.
/// A list's children follow its type code, so stepping in is just not skipping its body.
struct RiffWalker {
    /// Where the file's chunks end (the outer RIFF size may be short in a cut file).
    end: u64,
    position: u64,
}

impl RiffWalker {
    fn start<R: Read + Seek>(reader: &mut R) -> Result<RiffWalker> {
        let end = reader.seek(SeekFrom::End(0))?;
        reader.seek(SeekFrom::Start(0))?;
        Ok(RiffWalker { end, position: 0 })
    }

    /// The next chunk's id and body size; for a list that is stepped into, its type code is
    /// returned as the id with the body still to come.
    fn next_chunk<R: Read + Seek>(&mut self, reader: &mut R) -> Result<Option<([u8; 4], u32)>> {
        loop {
            if self.position + 8 > self.end {
                return Ok(None);
            }
            let mut head = [0u8; 8];
            reader.read_exact(&mut head)?;
            self.position += 8;
            let id: [u8; 4] = head[0..4].try_into().expect("4 bytes");
            let size = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
            if &id == b"RIFF" || &id == b"LIST" {
                let mut kind = [0u8; 4];
                reader.read_exact(&mut kind)?;
                self.position += 4;
                if DESCEND.contains(&&kind) {
                    if &kind == b"movi" {
                        return Ok(Some((kind, size.saturating_sub(4))));
                    }
                    continue;
                }
                self.skip(reader, size.saturating_sub(4))?;
                continue;
            }
            return Ok(Some((id, size)));
        }
    }

    fn read_body<R: Read + Seek>(&mut self, reader: &mut R, size: u32) -> Result<Vec<u8>> {
        if self.position + size as u64 > self.end {
            bail!("chunk runs past the end of the file");
        }
        let mut body = vec![0u8; size as usize];
        reader.read_exact(&mut body)?;
        self.position += size as u64;
        self.skip_pad(reader, size)?;
        Ok(body)
    }

    fn skip<R: Read + Seek>(&mut self, reader: &mut R, size: u32) -> Result<()> {
        let padded = size as u64 + (size as u64 & 1);
        self.position = (self.position + padded).min(self.end);
        reader.seek(SeekFrom::Start(self.position))?;
        Ok(())
    }

    fn skip_pad<R: Read + Seek>(&mut self, reader: &mut R, size: u32) -> Result<()> {
        if size & 1 == 1 && self.position < self.end {
            reader.seek(SeekFrom::Current(1))?;
            self.position += 1;
        }
        Ok(())
    }
}

enum Container {
    Avi {
        reader: BufReader<File>,
        walker: RiffWalker,
        stream_tag: [u8; 2],
    },
    /// Concatenated JPEGs, held whole: such streams are short captures, not archives.
    Bare { bytes: Vec<u8>, offset: usize },
}

/// Frames of an MJPEG AVI or a bare MJPEG stream, decoded one at a time.
pub struct MjpegSource {
    path: PathBuf,
    info: VideoInfo,
    container: Container,
    next_index: u64,
    decoded: u64,
}

impl MjpegSource {
    pub fn open(path: &Path) -> Result<MjpegSource> {
        let name = path.display();
        let mut file = File::open(path).with_context(|| format!("{name}: cannot read"))?;
        let mut head = [0u8; 12];
        let got = file
            .read(&mut head)
            .with_context(|| format!("{name}: cannot read"))?;
        if got == 0 {
            bail!("{name}: empty file");
        }
        let (info, container) = if head.starts_with(&[0xFF, 0xD8]) {
            let mut bytes = Vec::new();
            file.seek(SeekFrom::Start(0))?;
            file.read_to_end(&mut bytes)
                .with_context(|| format!("{name}: cannot read"))?;
            let first = next_jpeg(&bytes, 0)
                .ok_or_else(|| anyhow!("{name}: not a readable video: no complete JPEG frame"))?;
            let (width, height) = jpeg_size(&bytes[first.0..first.1])
                .map_err(|e| anyhow!("{name}: not a readable video: {e}"))?;
            let info = VideoInfo {
                width,
                height,
                fps: BARE_STREAM_FPS,
                frames: None,
            };
            (info, Container::Bare { bytes, offset: 0 })
        } else if got == 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"AVI " {
            let header =
                AviHeader::read(path).map_err(|e| anyhow!("{name}: not a readable video: {e}"))?;
            if !header.is_mjpeg {
                bail!("{name}: not an MJPEG AVI (other codecs are decoded by ffmpeg)");
            }
            if header.info.width == 0 || header.info.height == 0 {
                bail!("{name}: not a readable video: no frame size");
            }
            let mut reader = BufReader::new(file);
            let walker = RiffWalker::start(&mut reader)?;
            let container = Container::Avi {
                reader,
                walker,
                stream_tag: header.stream_tag,
            };
            (header.info, container)
        } else {
            bail!("{name}: not a readable video: neither an AVI file nor a JPEG stream");
        };
        Ok(MjpegSource {
            path: path.to_path_buf(),
            info,
            container,
            next_index: 0,
            decoded: 0,
        })
    }

    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    /// The next compressed frame and its index in the stream; None at the end.
    fn next_compressed(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        match &mut self.container {
            Container::Bare { bytes, offset } => {
                let Some((start, end)) = next_jpeg(bytes, *offset) else {
                    if bytes[*offset..].iter().any(|&b| b != 0) {
                        bail!("last frame incomplete");
                    }
                    return Ok(None);
                };
                *offset = end;
                let index = self.next_index;
                self.next_index += 1;
                Ok(Some((index, bytes[start..end].to_vec())))
            }
            Container::Avi {
                reader,
                walker,
                stream_tag,
            } => loop {
                let Some((id, size)) = walker.next_chunk(reader)? else {
                    return Ok(None);
                };
                if &id == b"movi" {
                    continue; // the frames follow
                }
                let is_video =
                    id[0..2] == stream_tag[..] && (&id[2..4] == b"dc" || &id[2..4] == b"db");
                if !is_video {
                    walker.skip(reader, size)?;
                    continue;
                }
                let index = self.next_index;
                self.next_index += 1;
                // An empty chunk repeats the previous frame (a dropped frame): time moves on.
                if size == 0 {
                    continue;
                }
                let body = walker
                    .read_body(reader, size)
                    .map_err(|_| anyhow!("last frame incomplete"))?;
                return Ok(Some((index, body)));
            },
        }
    }
}

impl FrameSource for MjpegSource {
    fn next_frame(&mut self) -> Result<Option<TimedFrame>> {
        let cause = match self.next_compressed() {
            Ok(None) if self.decoded == 0 => {
                bail!("{}: video has no decodable frames", self.path.display())
            }
            Ok(None) => return Ok(None),
            Ok(Some((index, jpeg))) => match decode_jpeg(&jpeg) {
                Ok(frame) if (frame.width, frame.height) == (self.info.width, self.info.height) => {
                    self.decoded += 1;
                    return Ok(Some(TimedFrame {
                        index,
                        seconds: index as f64 / self.info.fps,
                        frame,
                    }));
                }
                Ok(frame) => format!(
                    "frame {index} is {}x{}, the stream {}x{}",
                    frame.width, frame.height, self.info.width, self.info.height
                ),
                Err(e) => format!("frame {index}: {e}"),
            },
            Err(e) => e.to_string(),
        };
        bail!(
            "{}: truncated or corrupt video after {} frames: {cause}",
            self.path.display(),
            self.decoded
        )
    }

    fn frame_count(&self) -> Option<u64> {
        self.info.frames
    }
}

fn decode_jpeg(jpeg: &[u8]) -> Result<Frame> {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .map_err(|e| anyhow!("not a readable JPEG: {e}"))?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(Frame::new(w as usize, h as usize, rgb.into_raw()))
}

fn jpeg_size(jpeg: &[u8]) -> Result<(usize, usize)> {
    let frame = decode_jpeg(jpeg)?;
    Ok((frame.width, frame.height))
}

/// The byte range of the next whole JPEG at or after `from` (SOI to EOI inclusive).
///
/// Marker segments are skipped by their lengths, so an EOI inside an EXIF thumbnail does not end
/// the frame; in entropy-coded data a 0xFF is followed by 0x00 or a restart marker, so the first
/// other marker there ends the scan.
fn next_jpeg(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let start = from + bytes[from..].windows(2).position(|w| w == [0xFF, 0xD8])?;
    let mut at = start + 2;
    loop {
        // Find the next marker (fill bytes 0xFF may repeat).
        while *bytes.get(at)? != 0xFF {
            at += 1;
        }
        while *bytes.get(at + 1)? == 0xFF {
            at += 1;
        }
        let marker = *bytes.get(at + 1)?;
        match marker {
            0xD9 => return Some((start, at + 2)),
            0x01 | 0xD0..=0xD7 => at += 2,
            0xDA => {
                // Start of scan: skip its header, then the entropy-coded data.
                let len = u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]) as usize;
                at += 2 + len;
                loop {
                    if *bytes.get(at)? == 0xFF {
                        let next = *bytes.get(at + 1)?;
                        if next == 0x00 || (0xD0..=0xD7).contains(&next) || next == 0xFF {
                            at += if next == 0xFF { 1 } else { 2 };
                            continue;
                        }
                        break;
                    }
                    at += 1;
                }
            }
            _ => {
                let len = u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]) as usize;
                at += 2 + len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(shade: u8, w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([shade, 255 - shade, 128]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .encode_image(&img)
            .unwrap();
        out
    }

    fn chunk(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = id.to_vec();
        out.extend((body.len() as u32).to_le_bytes());
        out.extend(body);
        if body.len() % 2 == 1 {
            out.push(0);
        }
        out
    }

    fn list(kind: &[u8; 4], children: &[u8]) -> Vec<u8> {
        let mut body = kind.to_vec();
        body.extend(children);
        chunk(b"LIST", &body)
    }

    /// An AVI as a camera writes one: an audio stream first, then MJPEG video at 15/2 fps.
    fn avi(frames: &[Vec<u8>], w: u32, h: u32) -> Vec<u8> {
        let mut audio_strh = b"auds".to_vec();
        audio_strh.extend([0u8; 52]);
        let mut strh = b"vidsMJPG".to_vec();
        strh.extend([0u8; 12]);
        strh.extend(2u32.to_le_bytes()); // scale
        strh.extend(15u32.to_le_bytes()); // rate
        strh.extend(0u32.to_le_bytes()); // start
        strh.extend((frames.len() as u32).to_le_bytes()); // length
        strh.extend([0u8; 20]);
        let mut strf = 40u32.to_le_bytes().to_vec();
        strf.extend((w as i32).to_le_bytes());
        strf.extend((h as i32).to_le_bytes());
        strf.extend(1u16.to_le_bytes());
        strf.extend(24u16.to_le_bytes());
        strf.extend(b"MJPG");
        strf.extend([0u8; 20]);
        let hdrl = [
            chunk(b"avih", &[0u8; 56]),
            list(b"strl", &chunk(b"strh", &audio_strh)),
            list(
                b"strl",
                &[chunk(b"strh", &strh), chunk(b"strf", &strf)].concat(),
            ),
        ]
        .concat();
        let mut movi = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            movi.extend(chunk(b"01wb", &[1, 2, 3]));
            if i == 1 {
                movi.extend(chunk(b"01dc", &[])); // a dropped frame
            }
            if i == 2 {
                // Interleaved files group chunks in `rec ` lists.
                movi.extend(list(b"rec ", &chunk(b"01dc", f)));
            } else {
                movi.extend(chunk(b"01dc", f));
            }
        }
        let mut riff = b"AVI ".to_vec();
        riff.extend(list(b"hdrl", &hdrl));
        riff.extend(chunk(b"JUNK", &[0u8; 7]));
        riff.extend(list(b"movi", &movi));
        riff.extend(chunk(b"idx1", &[0u8; 16]));
        chunk(b"RIFF", &riff)
    }

    fn write(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("veriface-mjpeg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn red_values(path: &Path) -> Vec<(u64, u8)> {
        let mut src = MjpegSource::open(path).unwrap();
        let mut out = Vec::new();
        while let Some(tf) = src.next_frame().unwrap() {
            out.push((tf.index, tf.frame.rgb[0]));
        }
        out
    }

    #[test]
    fn avi_frames_come_from_the_video_stream_with_its_rate() {
        let shades = [30u8, 130, 230];
        let frames: Vec<_> = shades.iter().map(|&s| jpeg(s, 40, 24)).collect();
        let path = write("three.avi", &avi(&frames, 40, 24));
        assert!(decodes(&path));
        let info = info(&path).unwrap();
        assert_eq!((info.width, info.height, info.frames), (40, 24, Some(3)));
        assert!((info.fps - 7.5).abs() < 1e-9);
        let got = red_values(&path);
        // Index 1 is the dropped frame: time moves on, nothing is decoded.
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0, 2, 3]);
        for ((_, red), want) in got.iter().zip(shades) {
            assert!(
                (*red as i32 - want as i32).abs() <= 6,
                "red {red}, encoded {want}"
            );
        }
    }

    #[test]
    fn a_cut_avi_names_the_frame_count_and_the_cause() {
        let frames: Vec<_> = [30u8, 130, 230].iter().map(|&s| jpeg(s, 40, 24)).collect();
        let whole = avi(&frames, 40, 24);
        let movi_at = whole.windows(4).position(|w| w == b"movi").unwrap();
        let last_frame_at = whole.windows(4).rposition(|w| w == b"01dc").unwrap();
        assert!(last_frame_at > movi_at);
        let path = write("cut.avi", &whole[..last_frame_at + 40]);
        let mut src = MjpegSource::open(&path).unwrap();
        assert!(src.next_frame().unwrap().is_some());
        assert!(src.next_frame().unwrap().is_some());
        let err = src.next_frame().unwrap_err().to_string();
        assert!(
            err.contains("cut.avi: truncated or corrupt video after 2 frames"),
            "{err}"
        );
    }

    #[test]
    fn an_avi_of_another_codec_is_left_to_ffmpeg() {
        let mut bytes = avi(&[jpeg(10, 8, 8)], 8, 8);
        let at = bytes.windows(4).position(|w| w == b"MJPG").unwrap();
        bytes[at..at + 4].copy_from_slice(b"H264");
        let at = bytes.windows(4).rposition(|w| w == b"MJPG").unwrap();
        bytes[at..at + 4].copy_from_slice(b"H264");
        let path = write("h264.avi", &bytes);
        assert!(!decodes(&path));
        let err = MjpegSource::open(&path).err().unwrap().to_string();
        assert!(err.contains("not an MJPEG AVI"), "{err}");
    }

    #[test]
    fn bare_streams_split_at_each_frame_end_not_at_a_thumbnail_end() {
        // An APP1 segment holding a fake EOI must not end the first frame.
        let mut first = jpeg(40, 16, 16);
        let app1 = [0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00];
        first.splice(2..2, app1);
        let bytes = [first, jpeg(200, 16, 16)].concat();
        let path = write("two.mjpeg", &bytes);
        assert!(decodes(&path));
        let got = red_values(&path);
        assert_eq!(got.len(), 2);
        assert!((got[0].1 as i32 - 40).abs() <= 6 && (got[1].1 as i32 - 200).abs() <= 6);
        let cut = write("cut.mjpeg", &bytes[..bytes.len() - 30]);
        let mut src = MjpegSource::open(&cut).unwrap();
        assert!(src.next_frame().unwrap().is_some());
        assert!(src
            .next_frame()
            .unwrap_err()
            .to_string()
            .contains("after 1 frames"));
    }

    #[test]
    fn garbage_is_refused_with_the_file_name() {
        let path = write("noise.avi", b"RIFF\x10\x00\x00\x00AVI JUNKxxxxxxxxxxxxx");
        assert!(!decodes(&path));
        let err = MjpegSource::open(&path).err().unwrap().to_string();
        assert!(err.contains("noise.avi: not a readable video"), "{err}");
    }
}
