"""kielnet: stellar labels (Teff, log g, [Fe/H], [α/M]) with honest uncertainties from
survey spectra, photometry and astrometry."""

__version__ = "0.1.0"
