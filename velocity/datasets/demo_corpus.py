"""A synthetic piano corpus in MAESTRO's layout, with velocities drawn from an explicit expressive model.

`generate_corpus(out_dir, n_pieces, seed)` writes `out_dir/maestro-v3.0.0/` with
`maestro-v3.0.0.csv` (MAESTRO's columns), the same table as column-wise `maestro-v3.0.0.json`, a
README, and one standard MIDI file per piece under a year folder. The same seed gives the same
bytes; piece `i` depends only on `(seed, i)`, so adding pieces does not change the earlier ones.
It exists so that `dvc repro` runs end to end with no network, and so that a velocity model has
real, known structure to learn.

Music (per piece): a key (major or harmonic minor), a meter (4/4, or 3/4 for dances and a few
others), a tempo of 56-144 beats per minute and a style (below). The piece is a chain of 4- and
8-bar phrases, one chord per bar (antecedent phrases end on V, consequent ones on I), until a
target of 280-720 notes is reached. Right hand: a melody, a random walk on the scale that lands on
chord tones on strong beats, rises toward the phrase's middle and ends on a long cadence note; some
bars are scale runs. Left hand, chosen per phrase from the style's textures: Alberti bass, block
chords, oom-pah / waltz, broken-chord arpeggios over two octaves, a walking bass, or four-part
chorale chords under the melody. Loud phrases thicken the texture (bass octaves, thirds or sixths
under the melody), soft ones thin it (two-note chords).

Styles: "Demo Baroque" (preludes, inventions; arpeggios and walking bass, terraced dynamics, little
rubato, mostly no pedal), "Demo Classical" (sonatinas, rondos; Alberti, block chords, oom-pah),
"Demo Romantic" (nocturnes, etudes; wide arpeggios, strong rubato, pedal), "Demo Dance" (waltzes,
minuets, mazurkas in 3/4) and "Demo Chorale" (hymns; four-part chords).

Velocity model, in MIDI velocity units, for note n of phrase k (all terms are saved per note by
`generate_piece`, so tests can check what a model could learn):

    velocity = clip(round(expected + noise), 1, 127),   noise ~ Normal(0, 3.5)
    expected = piece_level                          Normal(64, 3): the piece's overall loudness
             + phrase_level[k]                      pp -14, p -7, mf 0, f +7, ff +13 (style-dependent)
             + arc_k * (sin(pi * u**g_k) - 0.5)     phrase arc: u = position in the phrase (0..1);
                                                    crescendo to a peak at 55-75% of the phrase,
                                                    then diminuendo; arc_k 8-22 by style
             + role                                 melody +9, bass 0, inner accompaniment -7
             + voicing                              in a chord: top note +3, bottom note +1, inner -1
             + metre                                downbeat +4 (+5 in 3/4), beat 3 of 4/4 +1.5,
                                                    off-beat eighth -1.5, finer subdivision -2.5
             + contour                              melody only: +0.3 per semitone above the
                                                    phrase's melodic centre, clipped to +-5

Phrase arcs and the melody/accompaniment role dominate the variance; the melody and the chords
share the octave around middle C, so one pitch occurs in both roles and a per-pitch mean cannot
recover them. What the model sees is made to carry the structure, as in real playing: the melody
is the top voice with its own rhythm and sounds 15 ms early, loud phrases have thicker textures,
and timing follows the dynamics.

Timing: beats are placed on a grid of 1/12 beat (sixteenths and triplets), then performed with
rubato: within a phrase the local beat length is 1 - rubato * (arc - 0.5) (faster toward the
dynamic peak) plus a ritardando over the last 20% of the phrase, then a short breath before the
next phrase. Onsets get melody lead and Normal(0, 5 ms) jitter; articulation sets each note's
length (legato melody, detached chords). The sustain pedal (CC64) is changed at every bar with
continuous ramps (release just after the new harmony, re-press about 120 ms later, small drift in
between), as in the real data.

Files: type-1 MIDI with two tracks like MAESTRO's: track 0 holds the tempo (120 bpm) and a 4/4
time signature, track 1 a program change, the pedal and the notes (note-offs as velocity-0
note-ons). At 480 ticks per beat and 120 bpm one second is 960 ticks; times are performance
times, as in MAESTRO, so the written meter is not the musical one. The csv's duration is the time
of the file's last event.

Scores: `generate_scores(out_dir, n_pieces, seed)` writes the same pieces' scores in the ASAP
dataset's layout (`asap-dataset/metadata.csv`, per piece `Demo/<style>/<title>/`). Each
`generate_piece` carries its `DemoScore`: every written note on the grid (also those the
performance drops), the phrases' markings and the performance's time map. `midi_score.mid` is the
score at the notated tempo, meter and key, its velocities as MuseScore renders dynamics (the
phrase's marking pp 33 .. ff 112, a +8 hairpin up to the arc's peak and back, per beat; Baroque
and Chorale pieces carry no markings: 80 throughout, like ASAP's Bach scores). The beat annotations
give every beat's time in the score and in the performance (the rubato time map), so the pairing is
the true one: mapped through the beats, each performed note lies within 40 ms of its score note,
except in a phrase's last beat, where the breath before the next phrase stretches the interval.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from velocity.datasets.asap import MAESTRO_PREFIX
from velocity.datasets.maestro import COLUMNS, CSV_NAME, MAESTRO_DIR, SPLITS

log = logging.getLogger(__name__)

JSON_NAME = "maestro-v3.0.0.json"
YEARS = (2004, 2006, 2008, 2009, 2011, 2013, 2014, 2015, 2017, 2018)  # MAESTRO's year folders

TICKS_PER_BEAT = 480
MIDI_TEMPO = 500_000  # microseconds per beat: 120 bpm, like MAESTRO's files
TICKS_PER_SECOND = TICKS_PER_BEAT * 1_000_000 // MIDI_TEMPO  # 960
GRID = 12  # score grid steps per beat: sixteenths (3 steps) and eighth triplets (4 steps)
LOWEST_PITCH, HIGHEST_PITCH = 21, 108

# --- the expressive velocity model (documented in the module docstring) ---
MELODY, BASS, INNER = 0, 1, 2
ROLE_NAMES = ("melody", "bass", "inner")
ROLE_OFFSET = np.array([9.0, 0.0, -7.0])  # indexed by role
TOP, MIDDLE, BOTTOM, SINGLE = 3.0, -1.0, 1.0, 0.0  # voicing offsets within a chord
DYNAMIC_LEVELS = {"pp": -14.0, "p": -7.0, "mf": 0.0, "f": 7.0, "ff": 13.0}
PIECE_LEVEL_MEAN, PIECE_LEVEL_SD = 64.0, 3.0
CONTOUR_PER_SEMITONE, CONTOUR_LIMIT = 0.3, 5.0
NOISE_SD = 3.5
MELODY_LEAD_S = 0.015
ONSET_JITTER_S = 0.005

# --- the written score (ASAP's layout) ---
ASAP_DIR = "asap-dataset"
ASAP_CSV = "metadata.csv"
ASAP_COLUMNS = ["composer", "title", "folder", "xml_score", "midi_score", "midi_performance", "performance_annotations",
                "midi_score_annotations", "maestro_midi_performance", "maestro_audio_performance", "start", "end",
                "audio_performance"]  # fmt: skip
MUSESCORE_VELOCITY = {"pp": 33, "p": 49, "mp": 64, "mf": 80, "f": 96, "ff": 112}  # how MuseScore plays the markings
UNMARKED_VELOCITY = 80  # MuseScore's velocity where no dynamic is marked
HAIRPIN = 8  # velocity a phrase's crescendo adds by the arc's peak; the diminuendo takes it back
# Written without dynamics, as ASAP's Bach scores are: their score MIDI has one velocity throughout.
UNMARKED_STYLES = ("Demo Baroque", "Demo Chorale")
SCORE_TICKS_PER_STEP = TICKS_PER_BEAT // GRID

MAJOR = (0, 2, 4, 5, 7, 9, 11)
HARMONIC_MINOR = (0, 2, 3, 5, 7, 8, 11)
KEY_NAMES = ("C", "D-flat", "D", "E-flat", "E", "F", "F-sharp", "G", "A-flat", "A", "B-flat", "B")

# Chord roots (scale degrees 0..6), one per bar: antecedents end on V, consequents on I.
HALF_CADENCES = ((0, 3, 0, 4), (0, 5, 1, 4), (0, 3, 1, 4), (5, 1, 0, 4))
FULL_CADENCES = ((0, 3, 4, 0), (0, 1, 4, 0), (5, 3, 4, 0), (0, 5, 4, 0), (3, 4, 4, 0))

# Melody rhythms per bar, in grid steps (12 per beat).
RHYTHMS = {
    4: ((12, 12, 12, 12), (18, 6, 12, 12), (6, 6, 6, 6, 12, 12), (24, 12, 12), (12, 12, 24),
        (6, 6, 12, 24), (12, 6, 6, 12, 12), (36, 12), (4, 4, 4, 12, 12, 12), (12, 12, 6, 6, 12)),
    3: ((12, 12, 12), (24, 12), (18, 6, 12), (6, 6, 6, 6, 12), (12, 6, 6, 12), (4, 4, 4, 12, 12), (6, 6, 24)),
}
CADENCE_RHYTHMS = {4: ((12, 12, 24), (24, 24), (12, 36)), 3: ((12, 24), (24, 12), (36,))}
CHORALE_RHYTHMS = {4: ((12, 12, 12, 12), (24, 12, 12), (12, 12, 24)), 3: ((12, 12, 12), (24, 12))}


@dataclass(frozen=True)
class Style:
    """How one imaginary composer writes and plays."""

    composer: str
    forms: tuple[str, ...]
    triple_meter_share: float
    bpm: tuple[float, float]
    textures: tuple[str, ...]  # left-hand patterns, drawn per phrase
    runs_share: float  # share of melody bars played as scale runs
    rubato: tuple[float, float]  # amplitude of the phrase tempo curve
    ritardando: tuple[float, float]  # extra beat length at the end of a phrase
    arc: tuple[float, float]  # phrase arc amplitude, velocity units
    dynamics: tuple[str, ...]  # phrase levels drawn from
    pedal_share: float  # share of pieces that use the sustain pedal
    articulation: float  # key-down share of a chord's notated length


STYLES = (
    Style("Demo Baroque", ("Prelude", "Invention", "Toccata"), 0.15, (72, 132), ("arpeggio", "walking", "block"),
          0.25, (0.01, 0.04), (0.10, 0.25), (8, 12), ("p", "f"), 0.3, 0.8),
    Style("Demo Classical", ("Sonatina", "Rondo", "Variations"), 0.2, (84, 144), ("alberti", "block", "oompah"),
          0.15, (0.03, 0.07), (0.15, 0.35), (10, 16), ("p", "mf", "f"), 0.6, 0.6),
    Style("Demo Romantic", ("Nocturne", "Etude", "Song without Words"), 0.2, (56, 100), ("arpeggio", "block"),
          0.1, (0.08, 0.16), (0.25, 0.5), (14, 22), ("pp", "p", "mf", "f", "ff"), 1.0, 0.9),
    Style("Demo Dance", ("Waltz", "Minuet", "Mazurka"), 1.0, (84, 144), ("oompah", "block"),
          0.05, (0.04, 0.10), (0.15, 0.35), (10, 16), ("p", "mf", "f"), 0.8, 0.5),
    Style("Demo Chorale", ("Chorale", "Hymn"), 0.2, (60, 96), ("chorale",),
          0.0, (0.02, 0.06), (0.3, 0.6), (10, 16), ("pp", "p", "mf", "f"), 0.5, 0.95),
)


@dataclass(frozen=True)
class DemoScore:
    """The written piece a `DemoPiece` performs: its notes on the grid (GRID steps per beat), each
    phrase's marking and arc, and the performance's time map. Notes the performance leaves out
    (`_resolve_overlaps`) are kept: a score holds what is written, not what is played."""

    onset: np.ndarray  # int64 grid steps from the first downbeat, sorted (then by pitch)
    length: np.ndarray  # int64 grid steps, the notated length
    pitch: np.ndarray  # int16
    role: np.ndarray  # int8: MELODY, BASS or INNER
    phrase: np.ndarray  # int32: index of the note's phrase
    phrase_start: np.ndarray  # int64: each phrase's first grid step
    phrase_steps: np.ndarray  # int64: each phrase's length in grid steps
    phrase_peak: np.ndarray  # float64: where each phrase's arc peaks, as a share of the phrase
    phrase_level: tuple[str, ...]  # each phrase's marking: pp, p, mf, f or ff
    marked: bool  # False: written without dynamics (every note at UNMARKED_VELOCITY)
    beats_per_bar: int  # 3 or 4 (quarter-note beats)
    bpm: float  # the notated tempo
    tonic: int  # pitch class
    minor: bool
    step_start_s: np.ndarray  # float64: performed seconds of every grid step, then of the end

    @property
    def key_sharps(self) -> int:
        """The key signature: sharps, negative for flats (F-sharp major: 6)."""
        major_tonic = (self.tonic + (3 if self.minor else 0)) % 12
        sharps = 7 * major_tonic % 12  # a fifth up adds a sharp
        return sharps - 12 if sharps > 6 else sharps


@dataclass(frozen=True)
class DemoPiece:
    """One generated performance: notes in time order, with the parts of the velocity model."""

    composer: str
    title: str
    beats_per_bar: int  # 3 or 4
    bpm: float  # the piece's basic tempo, before rubato
    midi: bytes  # the standard MIDI file
    duration: float  # seconds: the file's last event
    start: np.ndarray  # float64 seconds, as written (tick-quantized)
    end: np.ndarray
    pitch: np.ndarray  # int16
    velocity: np.ndarray  # int16, as written
    expected_velocity: np.ndarray  # float64: the model's velocity before noise and rounding
    role: np.ndarray  # int8: MELODY, BASS or INNER
    phrase: np.ndarray  # int32: index of the note's phrase
    score: DemoScore  # what the pianist played from


class _Score:
    """Notes in score time (grid steps), collected column by column."""

    def __init__(self) -> None:
        self.onset: list[int] = []
        self.length: list[int] = []
        self.pitch: list[int] = []
        self.role: list[int] = []
        self.voicing: list[float] = []
        self.phrase: list[int] = []

    def add(self, onset: int, length: int, pitch: int, role: int, voicing: float, phrase: int) -> None:
        if LOWEST_PITCH <= pitch <= HIGHEST_PITCH and length > 0:
            self.onset.append(onset)
            self.length.append(length)
            self.pitch.append(pitch)
            self.role.append(role)
            self.voicing.append(voicing)
            self.phrase.append(phrase)

    def add_chord(self, onset: int, length: int, pitches: list[int], role: int, phrase: int) -> None:
        pitches = sorted(pitches)
        for i, p in enumerate(pitches):
            voicing = SINGLE if len(pitches) == 1 else TOP if i == len(pitches) - 1 else BOTTOM if i == 0 else MIDDLE
            self.add(onset, length, p, role, voicing, phrase)


@dataclass
class _Phrase:
    start_step: int
    n_steps: int
    level_name: str  # the marking: pp, p, mf, f or ff
    level: float  # phrase_level, velocity units
    arc: float
    arc_exponent: float  # g: sin(pi * u**g) peaks at u = 0.5**(1/g)
    rubato: float
    ritardando: float
    beat_s: float
    breath_s: float
    melody_centre: int  # pitch


def _chord_pcs(tonic: int, scale: tuple[int, ...], root_degree: int) -> tuple[int, int, int]:
    return tuple((tonic + scale[(root_degree + k) % 7]) % 12 for k in (0, 2, 4))  # type: ignore[return-value]


def _chord_tones(pcs: tuple[int, ...], low: int, high: int) -> list[int]:
    return [p for p in range(low, high + 1) if p % 12 in pcs]


def _lowest(pc: int, floor: int) -> int:
    return floor + (pc - floor) % 12


class _Composer:
    """Writes one piece into a `_Score`, phrase by phrase."""

    def __init__(self, rng: np.random.Generator, style: Style) -> None:
        self.rng = rng
        self.style = style
        self.tonic = int(rng.integers(12))
        self.minor = bool(rng.random() < 0.35)
        self.scale = HARMONIC_MINOR if self.minor else MAJOR
        self.beats = 3 if rng.random() < style.triple_meter_share else 4
        self.bar_steps = self.beats * GRID
        self.bpm = float(rng.uniform(*style.bpm))
        self.beat_s = 60.0 / self.bpm
        self.score = _Score()
        self.phrases: list[_Phrase] = []
        self.bar_starts: list[int] = []
        # Melody as a diatonic index: pitch = tonic_c4 + 12 * (n // 7) + scale[n % 7].
        self.tonic_c4 = 60 + (self.tonic if self.tonic < 6 else self.tonic - 12)
        self.melody_index = 9  # the third above the upper tonic

    def pitch_of(self, index: int) -> int:
        return self.tonic_c4 + 12 * (index // 7) + self.scale[index % 7]

    # --- phrases ---
    def write(self, target_notes: int, max_phrases: int = 40) -> None:
        step = 0
        last_level = None
        while len(self.phrases) < max_phrases:
            long_phrase = self.beats == 3 or self.rng.random() < 0.5
            if long_phrase:  # a period: antecedent (to V) and consequent (to I)
                roots = list(HALF_CADENCES[self.rng.integers(len(HALF_CADENCES))])
                roots += FULL_CADENCES[self.rng.integers(len(FULL_CADENCES))]
            else:
                pool = FULL_CADENCES if self.rng.random() < 0.6 else HALF_CADENCES
                roots = list(pool[self.rng.integers(len(pool))])
            level_name = self._next_level(last_level)
            last_level = level_name
            step = self._phrase(step, roots, level_name)
            if len(self.score.onset) >= target_notes and roots[-1] == 0:
                break

    def _next_level(self, last: str | None) -> str:
        names = self.style.dynamics
        if self.style.composer == "Demo Baroque" and last is not None:
            return "p" if last == "f" else "f"  # terraced dynamics: echo phrases
        choice = names[self.rng.integers(len(names))]
        if choice == last and self.rng.random() < 0.5:
            choice = names[self.rng.integers(len(names))]
        return choice

    def _phrase(self, start_step: int, roots: list[int], level_name: str) -> int:
        rng, style = self.rng, self.style
        k = len(self.phrases)
        n_bars = len(roots)
        centre_index = int(rng.integers(5, 13))  # melodic centre: about G4..A5
        peak = rng.uniform(0.55, 0.75)
        phrase = _Phrase(
            start_step=start_step,
            n_steps=n_bars * self.bar_steps,
            level_name=level_name,
            level=DYNAMIC_LEVELS[level_name],
            arc=rng.uniform(*style.arc),
            arc_exponent=math.log(0.5) / math.log(peak),
            rubato=rng.uniform(*style.rubato),
            ritardando=rng.uniform(*style.ritardando),
            beat_s=self.beat_s * rng.uniform(0.97, 1.03),
            breath_s=rng.uniform(0.05, 0.3) * self.beat_s,
            melody_centre=self.pitch_of(centre_index),
        )
        self.phrases.append(phrase)
        texture = style.textures[rng.integers(len(style.textures))]
        loud = level_name in ("f", "ff")
        soft = level_name in ("pp", "p")
        bass_floor = int(rng.integers(33, 41))
        chord_floor = int(rng.integers(50, 57))
        for bar, root in enumerate(roots):
            bar_step = start_step + bar * self.bar_steps
            self.bar_starts.append(bar_step)
            pcs = _chord_pcs(self.tonic, self.scale, root)
            last_bar = bar == n_bars - 1
            u_mid = (bar + 0.5) / n_bars
            # Melody rises toward the middle of the phrase and falls back: a contour target.
            target = centre_index + round(3 * math.sin(math.pi * u_mid)) - 1
            run = not last_bar and texture != "chorale" and rng.random() < style.runs_share
            melody = self._melody_bar(bar_step, pcs, root, target, last_bar, texture, run, k)
            self._left_hand(texture, bar_step, pcs, bass_floor, chord_floor, loud, soft, run, melody, k)
            if loud and texture != "chorale":
                self._double_melody(melody, pcs, k)
        return start_step + phrase.n_steps

    # --- right hand ---
    def _melody_bar(self, bar_step: int, pcs: tuple[int, ...], root: int, target: int, cadence: bool,
                    texture: str, run: bool, k: int) -> list[tuple[int, int, int]]:
        rng = self.rng
        if run:
            step_len = 3 if self.beat_s >= 0.45 else 4  # sixteenths, or triplets when fast
            lengths = [step_len] * (self.bar_steps // step_len)
        elif cadence:
            options = CADENCE_RHYTHMS[self.beats]
            lengths = list(options[rng.integers(len(options))])
        else:
            options = CHORALE_RHYTHMS[self.beats] if texture == "chorale" else RHYTHMS[self.beats]
            lengths = list(options[rng.integers(len(options))])
        chord_degrees = {(root + j) % 7 for j in (0, 2, 4)}
        direction = 1 if target >= self.melody_index else -1
        notes = []
        pos = 0
        for i, length in enumerate(lengths):
            n = self.melody_index
            if run:
                n += direction
            elif cadence and i == len(lengths) - 1:
                goal = {0} if root == 0 else {1, 4}  # tonic, or supertonic / dominant on a half cadence
                n = min((m for m in range(n - 3, n + 4) if m % 7 in goal), key=lambda m: (abs(m - target), m))
            else:
                toward = 1 if target > n else -1 if target < n else int(rng.choice((-1, 1)))
                step = int(rng.choice((1, 1, 1, 2, 3))) * (toward if rng.random() < 0.7 else -toward)
                n += step
                if pos % GRID == 0:  # strong positions land on a chord tone
                    n = min((m for m in range(n - 2, n + 3) if m % 7 in chord_degrees), key=lambda m: (abs(m - n), m))
            n = min(max(n, 2), 20)  # keep the melody within about D4..A6
            self.melody_index = n
            pitch = self.pitch_of(n)
            notes.append((bar_step + pos, length, pitch))
            self.score.add(bar_step + pos, length, pitch, MELODY, SINGLE, k)
            pos += length
        return notes

    def _double_melody(self, melody: list[tuple[int, int, int]], pcs: tuple[int, ...], k: int) -> None:
        """Loud phrases: a chord tone a third to a sixth under melody notes on the beat."""
        for onset, length, pitch in melody:
            if (onset % GRID) == 0 and length >= GRID and self.rng.random() < 0.6:
                below = [p for p in _chord_tones(pcs, pitch - 9, pitch - 3)]
                if below:
                    self.score.add(onset, length, below[-1], INNER, MIDDLE, k)

    # --- left hand ---
    def _left_hand(self, texture: str, bar_step: int, pcs: tuple[int, ...], bass_floor: int, chord_floor: int,
                   loud: bool, soft: bool, run: bool, melody: list[tuple[int, int, int]], k: int) -> None:
        add, add_chord = self.score.add, self.score.add_chord
        bar = self.bar_steps
        bass = _lowest(pcs[0], bass_floor)
        if loud and bass - 12 >= 24:
            add(bar_step, bar, bass - 12, BASS, BOTTOM, k)  # octave doubling of the downbeat bass
        if run:  # the hands do not compete with a run: a held bass and one chord
            add(bar_step, bar, bass, BASS, SINGLE, k)
            add_chord(bar_step, bar // 2, self._triad(pcs, chord_floor, soft), INNER, k)
            return
        if texture == "alberti":
            low = _lowest(pcs[0], chord_floor - 5)
            third, fifth = _lowest(pcs[1], low + 1), _lowest(pcs[2], low + 1)
            step_len = 6 if self.beat_s < 0.5 else 3  # eighths when fast, sixteenths when slow
            for i in range(bar // step_len):
                p = (low, fifth, third, fifth)[i % 4]
                add(bar_step + i * step_len, step_len, p, BASS if i % 4 == 0 else INNER, SINGLE, k)
        elif texture == "block":
            add(bar_step, bar, bass, BASS, SINGLE, k)
            chord = self._triad(pcs, chord_floor, soft)
            for beat in range(self.beats):
                if beat == 0 and self.beats == 4 and self.rng.random() < 0.5:
                    continue
                add_chord(bar_step + beat * GRID, GRID, chord, INNER, k)
        elif texture == "oompah":
            chord = self._triad(pcs, chord_floor, soft)
            strong = (0,) if self.beats == 3 else (0, 2)
            for beat in range(self.beats):
                if beat in strong:
                    p = bass if beat == 0 else _lowest(pcs[2], bass_floor)
                    add(bar_step + beat * GRID, GRID, p, BASS, SINGLE, k)
                else:
                    add_chord(bar_step + beat * GRID, GRID, chord, INNER, k)
        elif texture == "arpeggio":
            tones = _chord_tones(pcs, bass, bass + 26)[:6]
            figure = tones + tones[-2:0:-1]  # up and back down
            step_len = 6 if self.beat_s < 0.6 else (4 if self.beats == 3 or self.rng.random() < 0.5 else 3)
            for i in range(bar // step_len):
                p = figure[i % len(figure)]
                role = BASS if i == 0 else INNER
                length = bar if i == 0 else step_len * 2  # the bass is held, the rest overlap a little
                add(bar_step + i * step_len, length, p, role, SINGLE, k)
        elif texture == "walking":
            index = (pcs[0] - self.tonic) % 12
            degree = min(range(7), key=lambda d: abs(self.scale[d] - index))
            n = degree
            for i in range(bar // 6):
                p = self.tonic_c4 - 24 + 12 * (n // 7) + self.scale[n % 7]
                while p < bass_floor - 3:
                    p += 12
                add(bar_step + i * 6, 6, p, BASS, SINGLE, k)
                n += int(self.rng.choice((-1, 1, 1, 2)))
        elif texture == "chorale":
            for onset, length, pitch in melody:
                if onset % GRID:
                    continue
                alto = _chord_tones(pcs, pitch - 9, pitch - 2)
                tenor = _chord_tones(pcs, (alto[0] if alto else pitch) - 9, (alto[0] if alto else pitch) - 3)
                inner = ([alto[-1]] if alto else []) + ([tenor[-1]] if tenor and not soft else [])
                add_chord(onset, length, inner, INNER, k)
                add(onset, length, _lowest(pcs[0], bass_floor), BASS, SINGLE, k)
        else:
            raise ValueError(f"unknown texture {texture!r}")

    def _triad(self, pcs: tuple[int, ...], floor: int, soft: bool) -> list[int]:
        tones = _chord_tones(pcs, floor, floor + 14)[:3]
        return [tones[0], tones[-1]] if soft else tones


def _perform(composer: _Composer, rng: np.random.Generator, piece_level: float) -> dict[str, np.ndarray]:
    """Score -> performance: seconds for every grid step (rubato), then note times and velocities."""
    score, phrases, style = composer.score, composer.phrases, composer.style
    total_steps = phrases[-1].start_step + phrases[-1].n_steps
    step_start_s = np.empty(total_steps + 1)
    t = 0.5  # a moment of silence before the first note, as in a recording
    for ph in phrases:
        u = (np.arange(ph.n_steps) + 0.5) / ph.n_steps
        arc = np.sin(np.pi * u**ph.arc_exponent)
        beat_scale = 1.0 - ph.rubato * (arc - 0.5) + ph.ritardando * np.clip((u - 0.8) / 0.2, 0, 1) ** 2
        step_s = ph.beat_s / GRID * beat_scale
        step_start_s[ph.start_step : ph.start_step + ph.n_steps] = t + np.concatenate(([0.0], np.cumsum(step_s)[:-1]))
        t += float(step_s.sum()) + ph.breath_s
    step_start_s[total_steps] = t

    onset = np.asarray(score.onset)
    length = np.asarray(score.length)
    pitch = np.asarray(score.pitch)
    role = np.asarray(score.role, dtype=np.int8)
    voicing = np.asarray(score.voicing)
    phrase = np.asarray(score.phrase, dtype=np.int32)
    n = len(onset)

    # Velocity: the documented model, term by term.
    ph_start = np.array([p.start_step for p in phrases])[phrase]
    ph_steps = np.array([p.n_steps for p in phrases])[phrase]
    u = (onset - ph_start + 0.5) / ph_steps
    arc = np.sin(np.pi * u ** np.array([p.arc_exponent for p in phrases])[phrase])
    phrase_term = np.array([p.level for p in phrases])[phrase] + np.array([p.arc for p in phrases])[phrase] * (arc - 0.5)
    pos = onset % composer.bar_steps
    metre = np.where(pos % GRID == 0, 0.0, np.where(pos % (GRID // 2) == 0, -1.5, -2.5))
    metre = np.where(pos == 0, 5.0 if composer.beats == 3 else 4.0, metre)
    if composer.beats == 4:
        metre = np.where(pos == 2 * GRID, 1.5, metre)
    centre = np.array([p.melody_centre for p in phrases])[phrase]
    contour = np.where(role == MELODY, np.clip(CONTOUR_PER_SEMITONE * (pitch - centre), -CONTOUR_LIMIT, CONTOUR_LIMIT), 0.0)
    expected = piece_level + phrase_term + ROLE_OFFSET[role] + voicing + metre + contour
    velocity = np.clip(np.rint(expected + rng.normal(0.0, NOISE_SD, n)), 1, 127).astype(np.int16)

    # Timing: melody lead, jitter, articulation.
    lead = np.where(role == MELODY, -MELODY_LEAD_S, 0.0)
    start = np.maximum(step_start_s[onset] + lead + rng.normal(0.0, ONSET_JITTER_S, n), 0.0)
    notated = step_start_s[np.minimum(onset + length, total_steps)] - step_start_s[onset]
    articulation = np.where(role == MELODY, rng.uniform(0.9, 1.02, n), style.articulation * rng.uniform(0.85, 1.1, n))
    end = start + np.maximum(notated * articulation, 0.05)
    return {"start": start, "end": end, "pitch": pitch, "velocity": velocity, "expected": expected,
            "role": role, "phrase": phrase, "bar_s": step_start_s[np.asarray(composer.bar_starts)],
            "end_s": np.array([t]), "step_start_s": step_start_s}


def _pedal_events(rng: np.random.Generator, bar_s: np.ndarray, end_s: float) -> list[tuple[int, int]]:
    """(tick, value) sustain pedal changes at every bar, with continuous ramps like a real foot."""
    events: list[tuple[float, int]] = []
    down = int(rng.integers(96, 128))
    first = max(bar_s[0] - 0.05, 0.0)
    for i, v in enumerate((40, 80, down)):
        events.append((first + 0.02 * i, v))
    for bar_start, next_start in zip(bar_s[1:], np.append(bar_s[2:], end_s)):
        release = bar_start + rng.uniform(0.0, 0.04)  # just after the new harmony is struck
        for i, share in enumerate((0.7, 0.4, 0.15)):
            events.append((release + 0.02 * i, int(down * share)))
        events.append((release + 0.06, int(rng.integers(0, 12))))
        down = int(rng.integers(96, 128))
        press = release + rng.uniform(0.10, 0.14)
        for i, v in enumerate((35, 70, down)):
            events.append((press + 0.025 * i, v))
        if next_start - press > 0.5:
            events.append(((press + next_start) / 2, int(np.clip(down + rng.integers(-5, 6), 0, 127))))
    for i, v in enumerate((int(down * 0.6), int(down * 0.25), 0)):
        events.append((end_s + 0.2 + 0.03 * i, v))
    return [(round(s * TICKS_PER_SECOND), v) for s, v in events]


MIN_NOTE_TICKS = 24  # 25 ms: the shortest note a re-struck key may leave behind


def _resolve_overlaps(start_tick: np.ndarray, end_tick: np.ndarray, pitch: np.ndarray, role: np.ndarray) -> np.ndarray:
    """Shorten a note that still sounds when its key is struck again (in place); drop a strike that
    comes too soon after the previous one on the same key to leave that one a real length.

    Returns a mask of notes to keep (a melody note wins over an accompaniment note at the same tick)."""
    keep = np.ones(len(pitch), dtype=bool)
    order = np.lexsort((role, start_tick, pitch))  # melody (role 0) first among equal (pitch, start)
    prev = -1
    for i in order:
        if prev >= 0 and pitch[prev] == pitch[i]:
            if start_tick[i] < start_tick[prev] + MIN_NOTE_TICKS + 1:
                keep[i] = False
                continue
            end_tick[prev] = min(end_tick[prev], start_tick[i] - 1)
        prev = i
    return keep


def _vlq(value: int) -> bytes:
    """A MIDI variable-length quantity: 7 bits per byte, high bit set on all but the last."""
    if value < 0x80:
        return bytes((value,))
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return kind + len(data).to_bytes(4, "big") + data


def _conductor(tempo_us: int, beats_per_bar: int, key: tuple[int, bool] | None = None) -> bytes:
    """Track 0's events: tempo, time signature (quarter-note beats) and, for a score, the key
    signature as (sharps, minor)."""
    events = b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big")  # set tempo
    # time signature: beats, a quarter (2**2) per beat, 24 clocks per click, 8 32nds per beat
    events += b"\x00\xff\x58\x04" + bytes((beats_per_bar, 2, 24, 8))
    if key is not None:
        sharps, minor = key
        events += b"\x00\xff\x59\x02" + sharps.to_bytes(1, "big", signed=True) + bytes((int(minor),))
    return events + b"\x01\xff\x2f\x00"  # end of track


def _midi_bytes(start_tick: np.ndarray, end_tick: np.ndarray, pitch: np.ndarray, velocity: np.ndarray,
                pedal: list[tuple[int, int]], conductor: bytes) -> bytes:
    """A two-track type-1 Standard MIDI File: the conductor track's events, then program, pedal and notes.

    Written byte by byte (the format is a few lines; mido's per-message checks made this 10x
    slower); the tests read the files back with mido and pretty_midi."""
    # Sort key at equal ticks: note ends, then pedal, then note starts (a re-struck key ends first).
    events = [(int(t), 0, int(p), 0) for t, p in zip(end_tick, pitch)]
    events += [(t, 1, 64, v) for t, v in pedal]
    events += [(int(t), 2, int(p), int(v)) for t, p, v in zip(start_tick, pitch, velocity)]
    events.sort()
    track = bytearray(b"\x00\xc0\x00")  # program change: channel 0, acoustic grand piano
    now = 0
    for tick, kind, number, value in events:
        track += _vlq(tick - now)
        now = tick
        # 0xB0 control change, 0x90 note-on; note-offs are note-ons of velocity 0, as in most of MAESTRO.
        track += bytes((0xB0 if kind == 1 else 0x90, number, value))
    track += b"\x01\xff\x2f\x00"  # end of track
    header = (1).to_bytes(2, "big") + (2).to_bytes(2, "big") + TICKS_PER_BEAT.to_bytes(2, "big")  # type 1, 2 tracks
    return _chunk(b"MThd", header) + _chunk(b"MTrk", conductor) + _chunk(b"MTrk", bytes(track))


def score_velocity(score: DemoScore) -> np.ndarray:
    """Velocities as a notation program plays the dynamics: the phrase's marking, a crescendo
    hairpin up to the arc's peak and a diminuendo back, stepped per beat; unmarked: one velocity."""
    if not score.marked:
        return np.full(len(score.pitch), UNMARKED_VELOCITY, dtype=np.int16)
    k = score.phrase
    u = (score.onset - score.phrase_start[k]) // GRID * GRID / score.phrase_steps[k]  # the note's beat in its phrase
    peak = score.phrase_peak[k]
    ramp = np.where(u <= peak, u / peak, (1 - u) / (1 - peak))
    level = np.array([MUSESCORE_VELOCITY[name] for name in score.phrase_level])[k]
    return np.clip(level + np.rint(HAIRPIN * ramp), 1, 127).astype(np.int16)


def score_tempo_us(score: DemoScore) -> int:
    """The score MIDI's tempo, microseconds per beat."""
    return round(60_000_000 / score.bpm)


def score_midi(score: DemoScore) -> bytes:
    """The score as MuseScore exports one: on the grid at the notated tempo, 480 ticks per beat, the
    meter and key, chords exactly together, notated lengths and `score_velocity`.

    MIDI cannot sound one key twice at once: a note still held when its key is written again ends
    there, and a unison of two voices (same key, same onset) is one note, the longer."""
    start = score.onset * SCORE_TICKS_PER_STEP
    end = (score.onset + score.length) * SCORE_TICKS_PER_STEP
    keep = np.ones(len(start), dtype=bool)
    prev = -1
    for i in np.lexsort((-end, start, score.pitch)):  # key by key in time, the longer of a unison first
        if prev >= 0 and score.pitch[prev] == score.pitch[i]:
            if start[i] == start[prev]:
                keep[i] = False
                continue
            end[prev] = min(end[prev], start[i])
        prev = i
    conductor = _conductor(score_tempo_us(score), score.beats_per_bar, (score.key_sharps, score.minor))
    return _midi_bytes(start[keep], end[keep], score.pitch[keep], score_velocity(score)[keep], [], conductor)


def beat_annotations(score: DemoScore) -> tuple[str, str]:
    """ASAP's beat files for the score MIDI and for the performance: `time<TAB>time<TAB>label` per
    beat, line i the same beat in both. Labels: `db,<beats>/4,<sharps>` on the first downbeat, `db`
    on the others, `b` between. Performed times are the rubato time map at each beat, as the
    performance file's ticks hold them."""
    beats = np.arange((len(score.step_start_s) - 1) // GRID)
    score_s = beats * score_tempo_us(score) / 1_000_000
    performed_s = np.rint(score.step_start_s[beats * GRID] * TICKS_PER_SECOND) / TICKS_PER_SECOND
    labels = ["db" if b % score.beats_per_bar == 0 else "b" for b in beats]
    labels[0] = f"db,{score.beats_per_bar}/4,{score.key_sharps}"

    def lines(times: np.ndarray) -> str:
        return "".join(f"{t:.6f}\t{t:.6f}\t{label}\n" for t, label in zip(times, labels))

    return lines(score_s), lines(performed_s)


def _play(composer: _Composer, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, bytes, list[tuple[int, int]]]:
    """One pianist's performance of the composed piece: its notes (`_perform`'s columns, overlaps
    resolved, in time order), their ticks, the MIDI bytes and the pedal events."""
    piece_level = rng.normal(PIECE_LEVEL_MEAN, PIECE_LEVEL_SD)
    perf = _perform(composer, rng, piece_level)

    start_tick = np.rint(perf["start"] * TICKS_PER_SECOND).astype(np.int64)
    end_tick = np.maximum(np.rint(perf["end"] * TICKS_PER_SECOND).astype(np.int64), start_tick + MIN_NOTE_TICKS)
    keep = _resolve_overlaps(start_tick, end_tick, perf["pitch"], perf["role"])
    order = np.lexsort((perf["pitch"][keep], start_tick[keep]))
    columns = {name: perf[name][keep][order] for name in ("pitch", "velocity", "expected", "role", "phrase")}
    columns["step_start_s"] = perf["step_start_s"]
    start_tick, end_tick = start_tick[keep][order], end_tick[keep][order]

    uses_pedal = rng.random() < composer.style.pedal_share
    pedal = _pedal_events(rng, perf["bar_s"], float(end_tick.max()) / TICKS_PER_SECOND) if uses_pedal else []
    # The performance's file keeps MAESTRO's 120 bpm and 4/4, whatever the music's meter.
    midi = _midi_bytes(start_tick, end_tick, columns["pitch"], columns["velocity"], pedal, _conductor(MIDI_TEMPO, 4))
    return columns, start_tick, end_tick, midi, pedal


def generate_piece(seed: int, index: int, pianist: int = 0) -> DemoPiece:
    """Piece `index` of the corpus with this seed: music, performance, velocities and MIDI bytes.
    Pianist 0 is the corpus's performance; another `pianist` plays the same score (same title and
    notes) with its own loudness, noise, articulation and pedal: the ASAP-only rows of the scores."""
    rng = np.random.default_rng([seed, index])
    style = STYLES[int(rng.integers(len(STYLES)))]
    composer = _Composer(rng, style)
    composer.write(target_notes=int(rng.integers(280, 721)))
    columns, start_tick, end_tick, midi, pedal = _play(composer, rng)
    if pianist:  # pianist 0's draws above keep the title's draw below the same
        columns, start_tick, end_tick, midi, pedal = _play(composer, np.random.default_rng([seed, index, 3, pianist]))
    last_tick = max(int(end_tick.max()), max((t for t, _ in pedal), default=0))

    score, phrases = composer.score, composer.phrases
    by_time = np.lexsort((score.pitch, score.onset))
    written = DemoScore(
        onset=np.asarray(score.onset, dtype=np.int64)[by_time], length=np.asarray(score.length, dtype=np.int64)[by_time],
        pitch=np.asarray(score.pitch, dtype=np.int16)[by_time], role=np.asarray(score.role, dtype=np.int8)[by_time],
        phrase=np.asarray(score.phrase, dtype=np.int32)[by_time],
        phrase_start=np.array([ph.start_step for ph in phrases], dtype=np.int64),
        phrase_steps=np.array([ph.n_steps for ph in phrases], dtype=np.int64),
        phrase_peak=np.array([0.5 ** (1 / ph.arc_exponent) for ph in phrases]),
        phrase_level=tuple(ph.level_name for ph in phrases), marked=style.composer not in UNMARKED_STYLES,
        beats_per_bar=composer.beats, bpm=composer.bpm, tonic=composer.tonic, minor=composer.minor,
        step_start_s=columns["step_start_s"],
    )

    key = f"{KEY_NAMES[composer.tonic]} {'minor' if composer.minor else 'major'}"
    form = style.forms[int(rng.integers(len(style.forms)))]
    title = f"{form} No. {index + 1} in {key}"
    return DemoPiece(
        composer=style.composer, title=title, beats_per_bar=composer.beats, bpm=composer.bpm, midi=midi, duration=last_tick / TICKS_PER_SECOND,
        start=start_tick / TICKS_PER_SECOND, end=end_tick / TICKS_PER_SECOND,
        pitch=columns["pitch"].astype(np.int16), velocity=columns["velocity"],
        expected_velocity=columns["expected"], role=columns["role"], phrase=columns["phrase"], score=written,
    )


def assign_splits(n_pieces: int, seed: int) -> list[str]:
    """train/validation/test per piece: 80/10/10, at least one piece each, in a seeded order."""
    if n_pieces < len(SPLITS):
        raise ValueError(f"the demo corpus needs at least {len(SPLITS)} pieces (one per split), got {n_pieces}")
    n_validation = max(1, round(0.1 * n_pieces))
    n_test = max(1, round(0.1 * n_pieces))
    splits = np.array(["train"] * (n_pieces - n_validation - n_test) + ["validation"] * n_validation + ["test"] * n_test)
    order = np.random.default_rng([seed, n_pieces, 1]).permutation(n_pieces)
    return [str(s) for s in splits[np.argsort(order)]]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _maestro_stem(seed: int, index: int, title: str) -> tuple[int, str]:
    """A piece's year folder in the corpus and its MIDI file without `.midi`: `<year>/DEMO_<index>_<title>`."""
    year = YEARS[np.random.default_rng([seed, index, 2]).integers(len(YEARS))]
    return year, f"{year}/DEMO_{index:04d}_{_slug(title)}"


def generate_corpus(out_dir: Path | str, n_pieces: int, seed: int, progress: bool = False) -> Path:
    """Write the demo corpus to `out_dir/maestro-v3.0.0/` and return that folder.

    Deterministic: the same `n_pieces` and `seed` give the same files, byte for byte.
    """
    splits = assign_splits(n_pieces, seed)
    root = Path(out_dir) / MAESTRO_DIR
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    indices = range(n_pieces)
    if progress:
        indices = tqdm(indices, desc="demo corpus", unit="piece")
    for index in indices:
        piece = generate_piece(seed, index)
        year, stem = _maestro_stem(seed, index, piece.title)
        (root / str(year)).mkdir(exist_ok=True)
        (root / f"{stem}.midi").write_bytes(piece.midi)
        rows.append({
            "canonical_composer": piece.composer, "canonical_title": piece.title, "split": splits[index],
            "year": year, "midi_filename": f"{stem}.midi", "audio_filename": f"{stem}.wav",
            "duration": round(piece.duration, 9),
        })
    (root / CSV_NAME).write_text(_csv_text(rows, COLUMNS), encoding="utf-8")
    columnwise = {col: {str(i): row[col] for i, row in enumerate(rows)} for col in COLUMNS}
    (root / JSON_NAME).write_text(json.dumps(columnwise, ensure_ascii=True) + "\n", encoding="utf-8")
    (root / "README").write_text(
        f"Synthetic demo corpus: {n_pieces} generated piano performances (seed {seed}) in the layout of\n"
        "MAESTRO v3.0.0. Not real performances: see velocity/datasets/demo_corpus.py for the music and the\n"
        "expressive velocity model that produced them.\n",
        encoding="utf-8",
    )
    return root


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def asap_only_performances(n_pieces: int, seed: int) -> list[tuple[int, int]]:
    """(piece index, pianist) of the demo scores' ASAP-only performances, as ASAP has beside its
    MAESTRO ones: a second pianist of the first piece of each split and of every 25th piece, and
    the first pianist of `n_pieces // 100` (at least one) pieces beyond the corpus, which have no
    MAESTRO performance at all (so the split rule sends them to train)."""
    splits = assign_splits(n_pieces, seed)
    firsts = {splits.index(split) for split in SPLITS}
    seconds = sorted(firsts | set(range(0, n_pieces, 25)))
    beyond = range(n_pieces, n_pieces + max(1, n_pieces // 100))
    return [(index, 1) for index in seconds] + [(index, 0) for index in beyond]


def generate_scores(out_dir: Path | str, n_pieces: int, seed: int, progress: bool = False) -> Path:
    """Write the scores of `generate_corpus`'s pieces in ASAP's layout to `out_dir/asap-dataset/`
    and return that folder: per piece `Demo/<style>/<title>/` with `midi_score.mid`, its beat
    annotations, the performance (the corpus file's bytes) as `Demo_Pianist_<index>.mid` and its
    beat annotations; and `metadata.csv`. Beside them, the ASAP-only performances of
    `asap_only_performances` (`Demo_Pianist_<index>_<pianist>.mid`, no MAESTRO recording).
    Deterministic like the corpus."""
    root = Path(out_dir) / ASAP_DIR
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    performances = [(index, 0) for index in range(n_pieces)] + asap_only_performances(n_pieces, seed)
    if progress:
        performances = tqdm(performances, desc="demo scores", unit="performance")
    for index, pianist in performances:
        piece = generate_piece(seed, index, pianist)
        folder = f"Demo/{_slug(piece.composer)}/{_slug(piece.title)}"
        in_maestro = index < n_pieces and pianist == 0
        performer = f"{folder}/Demo_Pianist_{index:04d}" + ("" if in_maestro else f"_{pianist}")
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "midi_score.mid").write_bytes(score_midi(piece.score))
        score_beats, performed_beats = beat_annotations(piece.score)
        (root / folder / "midi_score_annotations.txt").write_text(score_beats, encoding="utf-8")
        (root / f"{performer}.mid").write_bytes(piece.midi)
        (root / f"{performer}_annotations.txt").write_text(performed_beats, encoding="utf-8")
        _, stem = _maestro_stem(seed, index, piece.title)
        rows.append({
            "composer": piece.composer, "title": piece.title, "folder": folder, "xml_score": "",
            "midi_score": f"{folder}/midi_score.mid", "midi_performance": f"{performer}.mid",
            "performance_annotations": f"{performer}_annotations.txt",
            "midi_score_annotations": f"{folder}/midi_score_annotations.txt",
            "maestro_midi_performance": f"{MAESTRO_PREFIX}{stem}.midi" if in_maestro else "",
            "maestro_audio_performance": f"{MAESTRO_PREFIX}{stem}.wav" if in_maestro else "",
            "start": 0.0, "end": round(piece.duration, 9), "audio_performance": f"{performer}.wav",
        })
    (root / ASAP_CSV).write_text(_csv_text(rows, ASAP_COLUMNS), encoding="utf-8")
    (root / "README").write_text(
        f"Synthetic demo scores: the written pieces behind the {n_pieces} generated performances (seed {seed})\n"
        "of the demo corpus, in the layout of the ASAP dataset, with beat annotations that pair them\n"
        "exactly. See velocity/datasets/demo_corpus.py.\n",
        encoding="utf-8",
    )
    return root
