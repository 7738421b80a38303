"""Speech synthesis with libespeak-ng (from the `espeakng-loader` wheel) through ctypes."""

from __future__ import annotations

import ctypes
import threading

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

_INSTALL_HINT = (
    "mooer's demo corpus needs libespeak-ng from the PyPI wheel 'espeakng-loader'. "
    "Install it with `pip install espeakng-loader` (or `pip install -e .[demo]`, which `make install` runs)."
)


class _Event(ctypes.Structure):
    """speak_lib.h's espeak_EVENT."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_EVENT_LIST_END, _EVENT_WORD = 0, 1


class EspeakError(RuntimeError):
    """libespeak-ng could not be loaded or refused a request."""


class Espeak:
    """One process-wide libespeak-ng engine that synthesizes text to int16 samples.

    libespeak-ng keeps global state, so a process holds one engine and calls are serialized.
    """

    _instance: Espeak | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise EspeakError(_INSTALL_HINT) from err
        try:
            self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as err:
            raise EspeakError(f"could not load libespeak-ng ({err}). {_INSTALL_HINT}") from err
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if self.sample_rate <= 0:
            raise EspeakError(
                f"espeak_Initialize failed with data path {data_path.decode()!r}. {_INSTALL_HINT}"
            )
        self._chunks: list[np.ndarray] = []
        self._words: list[tuple[int, int, int]] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # keep a reference: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]

    @classmethod
    def get(cls) -> Espeak:
        """The engine of this process, created on first use."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        if events:
            event = ctypes.cast(events, ctypes.POINTER(_Event))
            i = 0
            while event[i].type != _EVENT_LIST_END:
                if event[i].type == _EVENT_WORD:
                    self._words.append((event[i].text_position, event[i].length,
                                        event[i].audio_position))
                i += 1
        return 0

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50,
                   pitch_range: int = 50, words: list | None = None) -> np.ndarray:
        """Speak `text` with `voice` (e.g. 'en-us', 'cmn+f3'); int16 samples at `self.sample_rate`.
        With a `words` list, each spoken word's (text position, length in characters, start in
        ms) is appended to it (espeak-ng's word events: ground-truth word times)."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise EspeakError(f"espeak-ng has no voice {voice!r}")
            for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch),
                                 (_PARAM_RANGE, pitch_range), (_PARAM_VOLUME, 100)):
                self._lib.espeak_SetParameter(param, int(value), 0)
            self._chunks, self._words = [], []
            data = text.encode("utf-8") + b"\0"
            err = self._lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise EspeakError(f"espeak_Synth failed (error {err}) on {text!r}")
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
            if words is not None:
                words += self._words
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
