//! What a stored image carries: its pixels and what renders them, never a
//! prompt, a camera, a place or a name. Providers' files come with text
//! chunks, EXIF, XMP and comments (the dev generator writes the prompt
//! into every PNG); [`strip_metadata`] drops them chunk by chunk, without
//! decoding or re-encoding the image, so the pixels are the provider's.

use bytes::Bytes;

use crate::{ProviderError, blocking::blocking, image_type};

/// An image whose structure could not be walked: nothing is stored from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a well-formed {format}: {reason}")]
pub struct MalformedImage {
    pub format: &'static str,
    pub reason: String,
}

fn malformed(format: &'static str, reason: impl Into<String>) -> MalformedImage {
    MalformedImage {
        format,
        reason: reason.into(),
    }
}

/// The image in `bytes` (PNG, JPEG, WebP or GIF: what
/// [`image_type`](crate::image_type) accepts) with only what it takes to
/// render it: PNG keeps its critical, colour, transparency, aspect,
/// background and animation chunks; JPEG its coding segments, JFIF (without
/// a thumbnail), the ICC profile and Adobe's colour transform; WebP its
/// image, alpha, animation and ICC chunks; GIF its images, graphic control
/// and loop count. Everything else goes, as do bytes after the image's end.
/// EXIF goes whole, its orientation too: generated output has none to lose.
pub fn strip_metadata(bytes: &[u8]) -> Result<Vec<u8>, MalformedImage> {
    match image_type(bytes) {
        Some("image/png") => png(bytes),
        Some("image/jpeg") => jpeg(bytes),
        Some("image/webp") => webp(bytes),
        Some("image/gif") => gif(bytes),
        _ => Err(malformed("image", "not a PNG, JPEG, WebP or GIF")),
    }
}

/// [`strip_metadata`] for a provider's output, off the async threads (a
/// large image is megabytes to copy). A malformed image is the provider's
/// fault and retries, as its other `invalid_image` answers do.
pub async fn strip_output(bytes: Bytes) -> Result<Bytes, ProviderError> {
    blocking(move || {
        strip_metadata(&bytes).map(Bytes::from).map_err(|e| {
            ProviderError::transient("invalid_image", format!("the provider's image is {e}"))
        })
    })
    .await
}

/// [`strip_metadata`] for a reference image a client gave, before kiln
/// keeps its copy and hands it to a provider: a photo's EXIF (where it was
/// taken, the camera's owner) is personal data no provider gets. A
/// malformed image is the client's and fails for good.
pub async fn strip_reference(bytes: Bytes) -> Result<Bytes, ProviderError> {
    blocking(move || {
        strip_metadata(&bytes).map(Bytes::from).map_err(|e| {
            ProviderError::permanent(
                "invalid_reference_image",
                format!("the reference image is {e}"),
            )
        })
    })
    .await
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The chunks kept: the critical ones, colour (`gAMA` … `cLLI`), `tRNS`,
/// `pHYs`, `bKGD`, and APNG's animation chunks. Text, `eXIf`, `tIME`,
/// C2PA and private chunks are not among them.
const PNG_KEEP: &[&[u8; 4]] = &[
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
    b"cICP", b"mDCV", b"cLLI", b"pHYs", b"bKGD", b"acTL", b"fcTL", b"fdAT",
];

fn png(bytes: &[u8]) -> Result<Vec<u8>, MalformedImage> {
    let bad = |reason: &str| malformed("PNG", reason);
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(PNG_SIGNATURE);
    let mut at = PNG_SIGNATURE.len();
    let mut has_data = false;
    loop {
        let header = bytes
            .get(at..at + 8)
            .ok_or_else(|| bad("it ends before IEND"))?;
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = [header[4], header[5], header[6], header[7]];
        if length > i32::MAX as u32 {
            return Err(bad("a chunk is longer than 2^31 - 1 bytes"));
        }
        if !kind.iter().all(u8::is_ascii_alphabetic) {
            return Err(bad("a chunk type is not four letters"));
        }
        if at == PNG_SIGNATURE.len() && &kind != b"IHDR" {
            return Err(bad("it does not start with IHDR"));
        }
        // Length, type, data, CRC.
        let end = at + 12 + length as usize;
        let chunk = bytes
            .get(at..end)
            .ok_or_else(|| bad("a chunk runs past the end"))?;
        if PNG_KEEP.contains(&&kind) {
            out.extend_from_slice(chunk);
        } else if kind[0].is_ascii_uppercase() {
            // A decoder must refuse a critical chunk it does not know.
            return Err(malformed(
                "PNG",
                format!("unknown critical chunk {}", String::from_utf8_lossy(&kind)),
            ));
        }
        has_data |= &kind == b"IDAT";
        if &kind == b"IEND" {
            break;
        }
        at = end;
    }
    if !has_data {
        return Err(bad("it has no IDAT"));
    }
    Ok(out)
}

fn jpeg(bytes: &[u8]) -> Result<Vec<u8>, MalformedImage> {
    let bad = |reason: &str| malformed("JPEG", reason);
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&[0xff, 0xd8]);
    let mut at = 2;
    let mut has_scan = false;
    loop {
        if bytes.get(at) != Some(&0xff) {
            return Err(bad("a segment does not start with a marker"));
        }
        // Any number of 0xff fill bytes may precede the marker's code.
        while bytes.get(at) == Some(&0xff) {
            at += 1;
        }
        let code = *bytes.get(at).ok_or_else(|| bad("it ends before EOI"))?;
        at += 1;
        match code {
            0xd9 if has_scan => {
                out.extend_from_slice(&[0xff, 0xd9]);
                return Ok(out);
            }
            0xd9 => return Err(bad("it has no scan")),
            0x00 | 0xd8 => return Err(bad("a marker out of place")),
            // Standalone markers: no length, no payload.
            0x01 | 0xd0..=0xd7 => {
                out.extend_from_slice(&[0xff, code]);
                continue;
            }
            _ => {}
        }
        let length = bytes
            .get(at..at + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
            .ok_or_else(|| bad("a segment length is cut off"))?;
        if length < 2 {
            return Err(bad("a segment shorter than its length field"));
        }
        let segment = bytes
            .get(at..at + length)
            .ok_or_else(|| bad("a segment runs past the end"))?;
        let payload = &segment[2..];
        match code {
            // JFIF: its density, but no thumbnail (which may show the
            // picture as it was before an edit).
            0xe0 if payload.starts_with(b"JFIF\0") && payload.len() >= 14 => {
                out.extend_from_slice(&[0xff, 0xe0, 0x00, 0x10]);
                out.extend_from_slice(&payload[..12]);
                out.extend_from_slice(&[0, 0]);
            }
            0xe2 if payload.starts_with(b"ICC_PROFILE\0") => keep(&mut out, code, segment),
            // Adobe: how CMYK and YCCK samples are to be read.
            0xee if payload.starts_with(b"Adobe") => keep(&mut out, code, segment),
            // Other APPn (Exif, XMP, IPTC, MPF, maker data) and COM.
            0xe0..=0xef | 0xfe => {}
            _ => keep(&mut out, code, segment),
        }
        at += length;
        if code == 0xda {
            has_scan = true;
            // Entropy-coded data runs to the next marker that is neither a
            // stuffed zero nor a restart.
            let start = at;
            loop {
                let next = bytes
                    .get(at..)
                    .and_then(|rest| rest.iter().position(|b| *b == 0xff))
                    .ok_or_else(|| bad("a scan runs to the end"))?;
                at += next;
                match bytes.get(at + 1) {
                    Some(0x00 | 0xd0..=0xd7) => at += 2,
                    Some(_) => break,
                    None => return Err(bad("a scan runs to the end")),
                }
            }
            out.extend_from_slice(&bytes[start..at]);
        }
    }
}

fn keep(out: &mut Vec<u8>, code: u8, segment: &[u8]) {
    out.extend_from_slice(&[0xff, code]);
    out.extend_from_slice(segment);
}

/// The WebP chunks kept; `EXIF`, `XMP ` and unknown chunks go.
const WEBP_KEEP: &[&[u8; 4]] = &[
    b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP",
];
/// `VP8X` flags announcing EXIF and XMP chunks.
const VP8X_EXIF: u8 = 0x08;
const VP8X_XMP: u8 = 0x04;

fn webp(bytes: &[u8]) -> Result<Vec<u8>, MalformedImage> {
    let bad = |reason: &str| malformed("WebP", reason);
    let size = bytes
        .get(4..8)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
        .ok_or_else(|| bad("the RIFF header is cut off"))?;
    let body = bytes
        .get(12..8 + size)
        .ok_or_else(|| bad("the RIFF size runs past the end"))?;
    let mut chunks = Vec::with_capacity(body.len());
    let mut at = 0;
    while at < body.len() {
        let header = body
            .get(at..at + 8)
            .ok_or_else(|| bad("a chunk header is cut off"))?;
        let kind = [header[0], header[1], header[2], header[3]];
        let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let payload = body
            .get(at + 8..at + 8 + length)
            .ok_or_else(|| bad("a chunk runs past the end"))?;
        if at == 0 && !matches!(&kind, b"VP8 " | b"VP8L" | b"VP8X") {
            return Err(bad("it does not start with VP8, VP8L or VP8X"));
        }
        if WEBP_KEEP.contains(&&kind) {
            chunks.extend_from_slice(&header[..8]);
            match (&kind, payload.split_first()) {
                (b"VP8X", Some((flags, rest))) => {
                    chunks.push(flags & !(VP8X_EXIF | VP8X_XMP));
                    chunks.extend_from_slice(rest);
                }
                _ => chunks.extend_from_slice(payload),
            }
            // Chunks are padded to an even length.
            if length % 2 == 1 {
                chunks.push(0);
            }
        }
        at += 8 + length + length % 2;
    }
    if chunks.is_empty() {
        return Err(bad("it has no image"));
    }
    let riff_size = u32::try_from(4 + chunks.len()).map_err(|_| bad("it is over 4 GiB"))?;
    let mut out = Vec::with_capacity(12 + chunks.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&riff_size.to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&chunks);
    Ok(out)
}

fn gif(bytes: &[u8]) -> Result<Vec<u8>, MalformedImage> {
    let bad = |reason: &str| malformed("GIF", reason);
    // Header and logical screen descriptor, then the global colour table.
    let packed = *bytes
        .get(10)
        .ok_or_else(|| bad("the screen descriptor is cut off"))?;
    let mut at = 13 + colour_table(packed);
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(
        bytes
            .get(..at)
            .ok_or_else(|| bad("the colour table is cut off"))?,
    );
    let mut has_image = false;
    loop {
        match bytes.get(at) {
            Some(0x3b) if has_image => {
                out.push(0x3b);
                return Ok(out);
            }
            Some(0x3b) => return Err(bad("it has no image")),
            Some(0x2c) => {
                let packed = *bytes
                    .get(at + 9)
                    .ok_or_else(|| bad("an image descriptor is cut off"))?;
                // Descriptor, local colour table, LZW code size, data.
                let data = at + 10 + colour_table(packed) + 1;
                let end = sub_blocks_end(bytes, data).ok_or_else(|| bad("an image is cut off"))?;
                out.extend_from_slice(&bytes[at..end]);
                has_image = true;
                at = end;
            }
            Some(0x21) => {
                let label = *bytes
                    .get(at + 1)
                    .ok_or_else(|| bad("an extension is cut off"))?;
                let end =
                    sub_blocks_end(bytes, at + 2).ok_or_else(|| bad("an extension is cut off"))?;
                let kept = match label {
                    // Graphic control: delays and transparency.
                    0xf9 => true,
                    // Application: only the loop count of an animation.
                    0xff => matches!(
                        bytes.get(at + 2..at + 14),
                        Some(b"\x0bNETSCAPE2.0" | b"\x0bANIMEXTS1.0")
                    ),
                    // Comments, plain text (which browsers do not draw), XMP.
                    _ => false,
                };
                if kept {
                    out.extend_from_slice(&bytes[at..end]);
                }
                at = end;
            }
            Some(_) => return Err(bad("a block of unknown type")),
            None => return Err(bad("it ends before the trailer")),
        }
    }
}

/// The size of the colour table a GIF descriptor's packed byte announces.
fn colour_table(packed: u8) -> usize {
    if packed & 0x80 == 0 {
        0
    } else {
        3 << ((packed & 0x07) + 1)
    }
}

/// Where the sub-blocks starting at `at` end (past their zero terminator).
fn sub_blocks_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let size = usize::from(*bytes.get(at)?);
        at += 1 + size;
        if size == 0 {
            return Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Cursor;

    use super::*;

    /// A 3×2 RGBA PNG carrying every kind of text chunk and an `eXIf`.
    fn png_with_metadata() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..3 * 2 * 4).map(|i| (i * 11) as u8).collect();
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 3, 2);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_source_gamma(png::ScaledFloat::new(1.0 / 2.2));
        encoder
            .add_text_chunk("prompt".into(), "a secret prompt".into())
            .unwrap();
        encoder
            .add_ztxt_chunk("Author".into(), "Ada Lovelace".into())
            .unwrap();
        encoder
            .add_itxt_chunk("Comment".into(), "午夜的秘密".into())
            .unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer
            .write_chunk(png::chunk::eXIf, b"MM\0*\0\0\0\x08GPS 51.5N")
            .unwrap();
        writer
            .write_chunk(png::chunk::tIME, &[0x07, 0xe9, 1, 2, 3, 4, 5])
            .unwrap();
        writer.write_image_data(&pixels).unwrap();
        writer.finish().unwrap();
        (out, pixels)
    }

    fn chunk_types(png: &[u8]) -> Vec<String> {
        let mut types = Vec::new();
        let mut at = 8;
        while at < png.len() {
            let length = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            types.push(String::from_utf8_lossy(&png[at + 4..at + 8]).into_owned());
            at += 12 + length;
        }
        types
    }

    fn decode(png: &[u8]) -> (png::Info<'static>, Vec<u8>) {
        let mut reader = png::Decoder::new(Cursor::new(png.to_vec()))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        pixels.truncate(frame.buffer_size());
        reader.finish().unwrap();
        (reader.info().clone(), pixels)
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn png_text_and_exif_chunks_go_and_the_pixels_stay() {
        let (original, pixels) = png_with_metadata();
        assert!(contains(&original, b"a secret prompt"));
        let stripped = strip_metadata(&original).unwrap();

        assert_eq!(chunk_types(&stripped), ["IHDR", "gAMA", "IDAT", "IEND"]);
        for secret in [&b"a secret prompt"[..], b"Author", b"Comment", b"GPS"] {
            assert!(!contains(&stripped, secret));
        }
        let (info, decoded) = decode(&stripped);
        assert_eq!(decoded, pixels);
        assert_eq!((info.width, info.height), (3, 2));
        assert!(info.uncompressed_latin1_text.is_empty());
        assert!(info.compressed_latin1_text.is_empty());
        assert!(info.utf8_text.is_empty());
        assert!(info.exif_metadata.is_none());
        assert!(info.gama_chunk.is_some(), "gAMA renders, so it stays");
        // Stripping twice changes nothing more.
        assert_eq!(strip_metadata(&stripped).unwrap(), stripped);
    }

    #[test]
    fn bytes_after_iend_go() {
        let (mut original, _) = png_with_metadata();
        original.extend_from_slice(b"PK\x03\x04 a hidden archive");
        let stripped = strip_metadata(&original).unwrap();
        assert!(stripped.ends_with(b"IEND\xae\x42\x60\x82"));
        assert!(!contains(&stripped, b"hidden"));
    }

    #[test]
    fn malformed_pngs_are_errors() {
        let (whole, _) = png_with_metadata();
        let mut no_ihdr = whole.clone();
        no_ihdr[12..16].copy_from_slice(b"tEXt");
        let mut huge = whole.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut critical = whole.clone();
        let iend = whole.len() - 8;
        critical[iend..iend + 4].copy_from_slice(b"ABCD");
        for (bytes, reason) in [
            (&whole[..8], "it ends before IEND"),
            (&whole[..whole.len() - 1], "a chunk runs past the end"),
            (&whole[..45], "a chunk runs past the end"),
            (&no_ihdr[..], "it does not start with IHDR"),
            (&huge[..], "a chunk is longer than 2^31 - 1 bytes"),
            (&critical[..], "unknown critical chunk ABCD"),
        ] {
            let err = strip_metadata(bytes).unwrap_err();
            assert_eq!(err.format, "PNG");
            assert_eq!(err.reason, reason);
        }
    }

    /// A baseline JPEG's segments around a scan with a stuffed zero and a
    /// restart marker (enough structure for the walk; not a decodable
    /// picture).
    fn jpeg_with(segments: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![0xff, 0xd8];
        for segment in segments {
            out.extend_from_slice(segment);
        }
        out.extend_from_slice(b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00");
        out.extend_from_slice(b"\x12\xff\x00\x34\xff\xd0\x56");
        out.extend_from_slice(b"\xff\xd9");
        out
    }

    fn segment(code: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0xff, code];
        out.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn jpeg_exif_xmp_and_comments_go() {
        let jfif = segment(0xe0, b"JFIF\0\x01\x02\x00\x00\x48\x00\x48\x00\x00");
        let exif = segment(0xe1, b"Exif\0\0MM\0*\0\0\0\x08GPS 51.5N Canon");
        let xmp = segment(
            0xe1,
            b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>Ada</x:xmpmeta>",
        );
        let icc = segment(0xe2, b"ICC_PROFILE\0\x01\x01profile");
        let iptc = segment(0xed, b"Photoshop 3.0\0by Ada");
        let comment = segment(0xfe, b"a secret prompt");
        let quant = segment(0xdb, &[0; 65]);
        let original = jpeg_with(&[&jfif, &exif, &xmp, &icc, &iptc, &comment, &quant]);
        let stripped = strip_metadata(&original).unwrap();
        assert_eq!(stripped, jpeg_with(&[&jfif, &icc, &quant]));
        for secret in [&b"Exif"[..], b"GPS", b"xmpmeta", b"Ada", b"a secret prompt"] {
            assert!(!contains(&stripped, secret));
        }
    }

    #[test]
    fn a_jfif_thumbnail_and_trailing_bytes_go() {
        let mut with_thumbnail = b"JFIF\0\x01\x02\x00\x00\x48\x00\x48\x01\x01".to_vec();
        with_thumbnail.extend_from_slice(&[0xab; 3]);
        let mut original = jpeg_with(&[&segment(0xe0, &with_thumbnail)]);
        original.extend_from_slice(b"trailing secret");
        let stripped = strip_metadata(&original).unwrap();
        let jfif = segment(0xe0, b"JFIF\0\x01\x02\x00\x00\x48\x00\x48\x00\x00");
        assert_eq!(stripped, jpeg_with(&[&jfif]));
    }

    #[test]
    fn malformed_jpegs_are_errors() {
        let whole = jpeg_with(&[&segment(0xe1, b"Exif\0\0")]);
        let mut short_length = whole.clone();
        short_length[4..6].copy_from_slice(&[0, 1]);
        for (bytes, reason) in [
            (&whole[..3], "it ends before EOI"),
            (&whole[..5], "a segment length is cut off"),
            (&whole[..8], "a segment runs past the end"),
            (&whole[..whole.len() - 2], "a scan runs to the end"),
            (&short_length[..], "a segment shorter than its length field"),
            (&b"\xff\xd8\xff\xd9"[..], "it has no scan"),
            (
                &b"\xff\xd8\xff\xe0\x00\x10JFIFxxxxx"[..],
                "a segment runs past the end",
            ),
            (
                &b"\xff\xd8\xff\xdb\x00\x02\x00"[..],
                "a segment does not start with a marker",
            ),
        ] {
            let err = strip_metadata(bytes).unwrap_err();
            assert_eq!(err.format, "JPEG");
            assert_eq!(err.reason, reason, "{bytes:x?}");
        }
    }

    fn riff(chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, payload) in chunks {
            body.extend_from_slice(*kind);
            body.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
            body.extend_from_slice(payload);
            if payload.len() % 2 == 1 {
                body.push(0);
            }
        }
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&u32::try_from(4 + body.len()).unwrap().to_le_bytes());
        out.extend_from_slice(b"WEBP");
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn webp_exif_and_xmp_go_and_vp8x_stops_announcing_them() {
        let vp8x = |flags: u8| [flags, 0, 0, 0, 9, 0, 0, 9, 0, 0];
        let original = riff(&[
            (b"VP8X", &vp8x(0x20 | VP8X_EXIF | VP8X_XMP)),
            (b"ICCP", b"profile"),
            (b"VP8L", b"lossless data"),
            (b"EXIF", b"MM\0*GPS 51.5N"),
            (b"XMP ", b"<x:xmpmeta>Ada</x:xmpmeta>"),
        ]);
        let stripped = strip_metadata(&original).unwrap();
        assert_eq!(
            stripped,
            riff(&[
                (b"VP8X", &vp8x(0x20)),
                (b"ICCP", b"profile"),
                (b"VP8L", b"lossless data"),
            ])
        );
        assert_eq!(crate::image_type(&stripped), Some("image/webp"));
    }

    #[test]
    fn malformed_webps_are_errors() {
        let whole = riff(&[(b"VP8 ", b"lossy"), (b"EXIF", b"GPS")]);
        let mut long = whole.clone();
        long[4..8].copy_from_slice(&1000u32.to_le_bytes());
        for (bytes, reason) in [
            (&long[..], "the RIFF size runs past the end"),
            (
                &riff(&[(b"EXIF", b"GPS"), (b"VP8 ", b"lossy")])[..],
                "it does not start with VP8, VP8L or VP8X",
            ),
            (&riff(&[])[..], "it has no image"),
        ] {
            let err = strip_metadata(bytes).unwrap_err();
            assert_eq!((err.format, err.reason.as_str()), ("WebP", reason));
        }
        // A chunk claiming more than the RIFF holds.
        let mut cut = whole.clone();
        cut[16..20].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(
            strip_metadata(&cut).unwrap_err().reason,
            "a chunk runs past the end"
        );
    }

    /// A 1×1 GIF89a with a global colour table, a comment, an XMP
    /// application extension, a loop count and a graphic control.
    fn gif_with_metadata() -> (Vec<u8>, Vec<u8>) {
        let head = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff".to_vec();
        let looping = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00".to_vec();
        let control = b"\x21\xf9\x04\x00\x00\x00\x00\x00".to_vec();
        let image = b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00".to_vec();
        let comment = b"\x21\xfe\x0fa secret prompt\x00".to_vec();
        let xmp = b"\x21\xff\x0bXMP DataXMP\x05<Ada>\x00".to_vec();
        let original = [&head[..], &comment, &looping, &xmp, &control, &image, b";"].concat();
        let expected = [&head[..], &looping, &control, &image, b";"].concat();
        (original, expected)
    }

    #[test]
    fn gif_comments_and_xmp_go() {
        let (original, expected) = gif_with_metadata();
        assert_eq!(strip_metadata(&original).unwrap(), expected);
    }

    #[test]
    fn malformed_gifs_are_errors() {
        let (whole, _) = gif_with_metadata();
        for bytes in [
            &whole[..8],
            &whole[..15],
            &whole[..whole.len() - 1],
            &whole[..30],
            &b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"[..],
            &b"GIF89a\x01\x00\x01\x00\x00\x00\x00?"[..],
        ] {
            assert_eq!(strip_metadata(bytes).unwrap_err().format, "GIF");
        }
    }

    #[test]
    fn other_bytes_are_errors_never_panics() {
        assert_eq!(strip_metadata(b"").unwrap_err().format, "image");
        assert_eq!(strip_metadata(b"<html>").unwrap_err().format, "image");
        // Every prefix and a flipped byte at every position of each format.
        let (png, _) = png_with_metadata();
        let (gif, _) = gif_with_metadata();
        let jpeg = jpeg_with(&[&segment(0xe1, b"Exif\0\0")]);
        let webp = riff(&[(b"VP8X", &[0; 10]), (b"EXIF", b"x")]);
        for image in [png, gif, jpeg, webp] {
            for end in 0..image.len() {
                let _ = strip_metadata(&image[..end]);
            }
            for at in 0..image.len() {
                let mut corrupt = image.clone();
                corrupt[at] ^= 0xff;
                let _ = strip_metadata(&corrupt);
            }
        }
    }

    #[tokio::test]
    async fn provider_output_that_does_not_parse_retries() {
        let err = strip_output(Bytes::from_static(b"\x89PNG\r\n\x1a\n"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProviderError::Transient { code, .. } if code == "invalid_image"),
            "{err}"
        );
    }
}
