//! The CLIP byte-level BPE tokenizer (openai/CLIP `clip/simple_tokenizer.py`, the same one
//! open_clip and VCP-CLIP's `models/simple_tokenizer.py` use), with extra special tokens such
//! as VCP-CLIP's `<|class|>` (id 49408).
//!
//! Text cleanup follows the reference: ftfy's `fix_text` (here: an ftfy-like subset, see
//! [`clean`]), HTML unescaping twice, whitespace runs collapsed, lower-casing.

use crate::error::{ClipError, Result};
use regex::Regex;
use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use unicode_normalization::UnicodeNormalization;

const VOCAB_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");

pub const SOT: u32 = 49406;
pub const EOT: u32 = 49407;
/// VCP-CLIP's placeholder for the learned category tokens.
pub const CLASS: u32 = 49408;
pub const CLASS_TOKEN: &str = "<|class|>";

pub struct Tokenizer {
    encoder: HashMap<String, u32>,
    decoder: Vec<String>,
    ranks: HashMap<(String, String), u32>,
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
    pattern: Regex,
    specials: Vec<String>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.decoder.len())
            .field("specials", &self.specials)
            .finish()
    }
}

/// GPT-2/CLIP's reversible map from bytes to printable characters, plus the order in which the
/// reference's dict yields them (printable bytes first), which is the vocabulary order.
fn bytes_to_unicode() -> ([char; 256], Vec<char>) {
    let mut printable: Vec<u32> = (u32::from('!')..=u32::from('~')).collect();
    printable.extend(u32::from('¡')..=u32::from('¬'));
    printable.extend(u32::from('®')..=u32::from('ÿ'));
    let mut map = ['\0'; 256];
    let mut order: Vec<char> = Vec::with_capacity(256);
    for &b in &printable {
        map[b as usize] = char::from_u32(b).unwrap();
        order.push(map[b as usize]);
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(256 + n).unwrap();
            order.push(map[b as usize]);
            n += 1;
        }
    }
    (map, order)
}

impl Tokenizer {
    /// The standard CLIP vocabulary (49408 entries, as open_clip).
    pub fn clip() -> Result<Self> {
        Self::with_specials(&[])
    }

    /// CLIP plus VCP-CLIP's `<|class|>` (49408).
    pub fn vcp() -> Result<Self> {
        Self::with_specials(&[CLASS_TOKEN])
    }

    /// CLIP plus extra special tokens, numbered from 49408 in the given order.
    pub fn with_specials(extra: &[&str]) -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(VOCAB_GZ)
            .read_to_string(&mut text)
            .map_err(|e| ClipError::Config(format!("embedded BPE vocabulary is corrupt: {e}")))?;
        // The reference keeps merges [1, 49152 - 256 - 2 + 1) of the file (line 0 is a header).
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(49152 - 256 - 2)
            .map(|l| {
                let mut it = l.split(' ');
                (
                    it.next().unwrap_or("").to_string(),
                    it.next().unwrap_or("").to_string(),
                )
            })
            .collect();
        let (byte_encoder, order) = bytes_to_unicode();
        let mut decoder: Vec<String> = order.iter().map(|c| c.to_string()).collect();
        decoder.extend(order.iter().map(|c| format!("{c}</w>")));
        decoder.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        let mut specials = vec!["<|startoftext|>".to_string(), "<|endoftext|>".to_string()];
        specials.extend(extra.iter().map(|s| s.to_string()));
        decoder.extend(specials.iter().cloned());
        let encoder = decoder
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let ranks = merges
            .into_iter()
            .enumerate()
            .map(|(i, m)| (m, i as u32))
            .collect();
        let special_alt: Vec<String> = specials.iter().map(|s| regex::escape(s)).collect();
        let pattern = format!(
            r"(?i){}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            special_alt.join("|")
        );
        Ok(Self {
            encoder,
            decoder,
            ranks,
            byte_decoder: byte_encoder
                .iter()
                .enumerate()
                .map(|(i, &c)| (c, i as u8))
                .collect(),
            byte_encoder,
            pattern: Regex::new(&pattern).map_err(|e| ClipError::Config(e.to_string()))?,
            specials,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// Id of a token string (e.g. a special token), if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.encoder.get(token).copied()
    }

    fn bpe(&self, token: &str) -> Vec<u32> {
        if let Some(ids) = self.cache.lock().unwrap().get(token) {
            return ids.clone();
        }
        let ids = if self.specials.iter().any(|s| s == token) {
            vec![self.encoder[token]]
        } else {
            let chars: Vec<char> = token.chars().collect();
            let mut word: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
            if let Some(last) = word.last_mut() {
                last.push_str("</w>");
            }
            loop {
                if word.len() < 2 {
                    break;
                }
                let best = word
                    .windows(2)
                    .filter_map(|p| {
                        self.ranks
                            .get(&(p[0].clone(), p[1].clone()))
                            .map(|r| (*r, p[0].clone(), p[1].clone()))
                    })
                    .min_by_key(|(r, _, _)| *r);
                let Some((_, first, second)) = best else {
                    break;
                };
                let mut merged = Vec::with_capacity(word.len());
                let mut i = 0;
                while i < word.len() {
                    if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                        merged.push(format!("{first}{second}"));
                        i += 2;
                    } else {
                        merged.push(word[i].clone());
                        i += 1;
                    }
                }
                word = merged;
            }
            word.iter().map(|w| self.encoder[w.as_str()]).collect()
        };
        self.cache
            .lock()
            .unwrap()
            .insert(token.to_string(), ids.clone());
        ids
    }

    /// BPE ids of a text, without start/end tokens (`SimpleTokenizer.encode`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = clean(text).to_lowercase();
        let mut ids = Vec::new();
        for m in self.pattern.find_iter(&text) {
            let tok: String = m
                .as_str()
                .bytes()
                .map(|b| self.byte_encoder[b as usize])
                .collect();
            ids.extend(self.bpe(&tok));
        }
        ids
    }

    /// `[SOT] + encode(text) + [EOT]`, zero-padded to `context`. Too-long text is an error
    /// unless `truncate`, which keeps the first `context` ids with EOT forced last
    /// (open_clip's `tokenize(..., truncate=True)`).
    pub fn tokenize(&self, text: &str, context: usize, truncate: bool) -> Result<Vec<u32>> {
        let mut ids = vec![SOT];
        ids.extend(self.encode(text));
        ids.push(EOT);
        if ids.len() > context {
            if !truncate {
                return Err(ClipError::Input(format!(
                    "text of {} tokens is longer than the context length {context}: {text:?}",
                    ids.len()
                )));
            }
            ids.truncate(context);
            ids[context - 1] = EOT;
        }
        ids.resize(context, 0);
        Ok(ids)
    }

    /// Text of ids (start/end tokens and padding kept as their strings; BPE word ends → spaces).
    pub fn decode(&self, ids: &[u32]) -> String {
        let text: String = ids
            .iter()
            .filter_map(|&i| self.decoder.get(i as usize))
            .cloned()
            .collect();
        let bytes: Vec<u8> = text
            .chars()
            .flat_map(|c| match self.byte_decoder.get(&c) {
                Some(b) => vec![*b],
                None => c.to_string().into_bytes(),
            })
            .collect();
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }
}

/// Reference `basic_clean` + `whitespace_clean`: ftfy-like fixes, HTML unescaped (twice, as the
/// reference does after ftfy), whitespace runs collapsed to one space, trimmed.
pub fn clean(text: &str) -> String {
    let mut t = ftfy_like(text);
    t = html_unescape(&html_unescape(&t));
    let t = t.trim();
    let ws = Regex::new(r"\s+").unwrap();
    ws.replace_all(t, " ").trim().to_string()
}

/// The parts of ftfy 6's `fix_text` defaults that matter for prompts: HTML entities (only when
/// the text has no `<`, as ftfy's "auto"), UTF-8 decoded as Windows-1252/Latin-1 ("mojibake"),
/// C1 controls read as Windows-1252, curly quotes, Latin ligatures, full-width ASCII, control
/// characters removed, NFC. ftfy's heuristics for rarer encodings are not reproduced.
pub fn ftfy_like(text: &str) -> String {
    let mut t = text.to_string();
    if !t.contains('<') {
        t = html_unescape(&t);
    }
    t = fix_mojibake(&t);
    t = t
        .chars()
        .filter_map(|c| {
            let u = c as u32;
            match u {
                0x00..=0x08
                | 0x0B
                | 0x0E..=0x1F
                | 0x7F
                | 0xFEFF
                | 0x206A..=0x206F
                | 0xFFF9..=0xFFFC => None,
                0x80..=0x9F => Some(cp1252_char(u as u8).to_string()),
                0x2018..=0x201B => Some("'".into()),
                0x201C..=0x201F => Some("\"".into()),
                0xFB00 => Some("ff".into()),
                0xFB01 => Some("fi".into()),
                0xFB02 => Some("fl".into()),
                0xFB03 => Some("ffi".into()),
                0xFB04 => Some("ffl".into()),
                0xFB05 | 0xFB06 => Some("st".into()),
                0xFF01..=0xFF5E => Some(char::from_u32(u - 0xFF01 + 0x21).unwrap().to_string()),
                0x3000 => Some(" ".into()),
                _ => Some(c.to_string()),
            }
        })
        .collect();
    t.nfc().collect()
}

/// Windows-1252 decoding of one byte (Latin-1 where 1252 leaves a slot undefined).
fn cp1252_char(b: u8) -> char {
    const HIGH: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013,
        0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
    ];
    match b {
        0x80..=0x9F => char::from_u32(HIGH[(b - 0x80) as usize]).unwrap(),
        _ => b as char,
    }
}

fn cp1252_byte(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 0x80 || (0xA0..=0xFF).contains(&u) {
        return Some(u as u8);
    }
    (0x80u8..=0x9F).find(|&b| cp1252_char(b) == c)
}

/// Re-decode runs that look like UTF-8 bytes shown as Windows-1252 (e.g. `Ã©` → `é`): a lead
/// byte character followed by continuation-byte characters, accepted only if the bytes form
/// valid UTF-8.
fn fix_mojibake(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(lead @ 0xC2..=0xF4) = cp1252_byte(c) {
            let need = if lead >= 0xF0 {
                3
            } else if lead >= 0xE0 {
                2
            } else {
                1
            };
            if i + need < chars.len() {
                let cont: Option<Vec<u8>> = chars[i + 1..i + 1 + need]
                    .iter()
                    .map(|&c| cp1252_byte(c).filter(|b| (0x80..=0xBF).contains(b)))
                    .collect();
                if let Some(cont) = cont.filter(|v| v.len() == need) {
                    let mut bytes = vec![lead];
                    bytes.extend(cont);
                    if let Ok(s) = std::str::from_utf8(&bytes) {
                        out.push_str(s);
                        i += 1 + need;
                        continue;
                    }
                }
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

// Long because it is a table of HTML entities (the reference's ftfy/html step).
/// Python's `html.unescape` for numeric references and the common named entities.
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let re = Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]*;?)").unwrap();
    re.replace_all(text, |caps: &regex::Captures| {
        let body = &caps[1];
        let whole = caps[0].to_string();
        if let Some(num) = body.strip_prefix('#') {
            let num = num.trim_end_matches(';');
            let code = if let Some(hex) = num.strip_prefix(['x', 'X']) {
                u32::from_str_radix(hex, 16).ok()
            } else {
                num.parse::<u32>().ok()
            };
            return match code {
                Some(0x80..=0x9F) => cp1252_char(code.unwrap() as u8).to_string(),
                Some(0) => '\u{FFFD}'.to_string(),
                Some(c) => char::from_u32(c)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| '\u{FFFD}'.to_string()),
                None => whole,
            };
        }
        let (name, semi) = match body.strip_suffix(';') {
            Some(n) => (n, true),
            None => (body, false),
        };
        // Entities Python also accepts without the semicolon (HTML5 legacy list, common subset).
        let legacy = matches!(
            name,
            "amp" | "lt" | "gt" | "quot" | "nbsp" | "copy" | "reg" | "AMP" | "LT" | "GT" | "QUOT"
        );
        if !semi && !legacy {
            return whole;
        }
        let rep = match name {
            "amp" | "AMP" => "&",
            "lt" | "LT" => "<",
            "gt" | "GT" => ">",
            "quot" | "QUOT" => "\"",
            "apos" => "'",
            "nbsp" => "\u{A0}",
            "copy" => "©",
            "reg" => "®",
            "trade" => "™",
            "hellip" => "…",
            "mdash" => "—",
            "ndash" => "–",
            "lsquo" => "‘",
            "rsquo" => "’",
            "ldquo" => "“",
            "rdquo" => "”",
            "deg" => "°",
            "times" => "×",
            "divide" => "÷",
            "plusmn" => "±",
            "micro" => "µ",
            "middot" => "·",
            "euro" => "€",
            "pound" => "£",
            "yen" => "¥",
            "cent" => "¢",
            "sect" => "§",
            "para" => "¶",
            "laquo" => "«",
            "raquo" => "»",
            "eacute" => "é",
            "egrave" => "è",
            "aacute" => "á",
            "agrave" => "à",
            "uuml" => "ü",
            "ouml" => "ö",
            "auml" => "ä",
            "szlig" => "ß",
            "ccedil" => "ç",
            "ntilde" => "ñ",
            _ => return whole,
        };
        let mut s = rep.to_string();
        if !semi {
            // Python keeps whatever followed the legacy name; our regex consumed only the name.
            s.push_str(&body[name.len()..]);
        }
        s
    })
    .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_prompts() {
        let t = Tokenizer::vcp().unwrap();
        assert_eq!(t.vocab_size(), 49409);
        assert_eq!(
            t.encode("a photo of a good <|class|>"),
            vec![320, 1125, 539, 320, 886, CLASS]
        );
        let ids = t
            .tokenize("a photo of a damaged <|class|>", 77, false)
            .unwrap();
        assert_eq!(&ids[..8], &[SOT, 320, 1125, 539, 320, 13568, CLASS, EOT]);
        assert!(ids[8..].iter().all(|&i| i == 0));
    }

    #[test]
    fn truncation_keeps_eot_last() {
        let t = Tokenizer::clip().unwrap();
        let long = "anomaly ".repeat(100);
        assert!(t.tokenize(&long, 77, false).is_err());
        let ids = t.tokenize(&long, 77, true).unwrap();
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[0], SOT);
        assert_eq!(ids[76], EOT);
    }

    #[test]
    fn cleanup() {
        assert_eq!(clean("  a\t\nb  "), "a b");
        assert_eq!(clean("&amp;amp;"), "&");
        assert_eq!(ftfy_like("mojibake: Ã©"), "mojibake: é");
        assert_eq!(ftfy_like("café"), "café");
        assert_eq!(ftfy_like("“quoted”"), "\"quoted\"");
    }
}
