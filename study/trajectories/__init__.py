"""Training trajectories across scales (Xia et al. 2023): the report section over a study's
pretraining workdirs (section), its CLI (`python -m study.trajectories`), and the check of the
same analysis on the bundled OPT trajectories (opt_check). Scoring itself lives in eval."""
