"""How far a codec's reconstruction is from its input: what ``train_codec`` trains on and
``evaluate_codec`` scores with, one definition for both."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Distances(nn.Module):
    """How far a reconstruction is from its input, as the codec trains on them and is judged
    by them: the multi-resolution STFT distance (auraloss), the log-mel L1 (torchaudio's mel
    filterbank), the waveform L1, and for scores SI-SDR."""

    def __init__(self, rate: int):
        super().__init__()
        import auraloss
        import torchaudio

        scale = rate / 24_000  # resolutions made for 24 kHz, scaled to the rate
        sizes = [int(2 ** round(math.log2(n * scale))) for n in (2048, 1024, 512, 256)]
        self.stft = auraloss.freq.MultiResolutionSTFTLoss(
            fft_sizes=sizes, hop_sizes=[n // 4 for n in sizes], win_lengths=sizes)
        self.mel = torchaudio.transforms.MelSpectrogram(rate, n_fft=sizes[1],
                                                        hop_length=sizes[1] // 4, n_mels=64)
        self.si_sdr = auraloss.time.SISDRLoss()

    def forward(self, y: Tensor, x: Tensor) -> dict[str, Tensor]:
        """{stft, mel, l1} of reconstructions ``y`` and inputs ``x`` [B, 1, N]."""
        y, x = y.float(), x.float()
        mel = (self.mel(y).clamp(min=1e-5).log() - self.mel(x).clamp(min=1e-5).log()).abs()
        return {"stft": self.stft(y, x), "mel": mel.mean(), "l1": F.l1_loss(y, x)}

    @torch.no_grad()
    def scores(self, y: Tensor, x: Tensor) -> dict[str, float]:
        """{mel, stft, si_sdr (dB)} of a reconstruction ``y`` of ``x``, both [N]."""
        y, x = y[None, None].float(), x[None, None].float()
        terms = self(y, x)
        return {"mel": float(terms["mel"]), "stft": float(terms["stft"]),
                "si_sdr": -float(self.si_sdr(y, x))}
